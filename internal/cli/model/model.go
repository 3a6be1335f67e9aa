// Package model holds the shape tables kmsctl is driven by: for each
// service, its operations, the shapes they reach (members in model order,
// types, required members, constraints, enums) and its paginators,
// generated from the botocore models on the build machine by
// `go generate` (internal/apigen -mode cli). Facts only, no documentation.
package model

//go:generate go run ../../apigen -mode cli -service kms -package model -var KMS -out zz_kms.go
//go:generate go run ../../apigen -mode cli -service cloudhsmv2 -package model -var CloudHSMV2 -out zz_cloudhsmv2.go

import "sort"

// Service is one AWS service as the aws CLI sees it.
type Service struct {
	Name           string // CLI command name and botocore service name
	APIVersion     string
	EndpointPrefix string
	SigningName    string
	TargetPrefix   string
	JSONVersion    string
	ServiceID      string
	Operations     []*Operation // sorted by name
	Shapes         map[string]*Shape
}

// Operation is one API operation.
type Operation struct {
	Name      string
	Input     string // shape name, "" when the operation takes none
	Output    string // shape name, "" when it returns none
	Paginator *Paginator
}

// Paginator is the botocore pagination configuration of an operation.
type Paginator struct {
	InputToken       []string
	OutputToken      []string
	MoreResults      string
	LimitKey         string
	ResultKeys       []string
	NonAggregateKeys []string
}

// Shape is one model shape.
type Shape struct {
	Name      string
	Type      string // structure, list, map, string, integer, long, boolean, blob, timestamp, float, double
	Members   []Member
	Required  []string // in model order, as botocore validates them
	Member    string   // list element shape
	Key       string   // map key shape
	Value     string   // map value shape
	Min, Max  *int64
	Enum      []string
	Sensitive bool
	Document  bool
}

// Member is one member of a structure.
type Member struct {
	Name     string
	Shape    string
	Required bool
}

func ptr(v int64) *int64 { return &v }

// Services lists the services kmsctl knows, by CLI name.
var Services = map[string]*Service{}

func init() {
	Services[KMS.Name] = KMS
	Services[CloudHSMV2.Name] = CloudHSMV2
}

// ServiceNames returns the service names in sorted order.
func ServiceNames() []string {
	var out []string
	for n := range Services {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Op returns the named operation (API name) or nil.
func (s *Service) Op(name string) *Operation {
	for _, o := range s.Operations {
		if o.Name == name {
			return o
		}
	}
	return nil
}

// Shape returns the named shape; it panics on a name the generator did
// not emit, which would be a generator bug.
func (s *Service) Shape(name string) *Shape {
	sh, ok := s.Shapes[name]
	if !ok {
		panic("model: unknown shape " + name)
	}
	return sh
}

// MemberShape returns the shape of member name of structure st, or nil.
func (s *Service) MemberShape(st *Shape, name string) *Shape {
	for _, m := range st.Members {
		if m.Name == name {
			return s.Shapes[m.Shape]
		}
	}
	return nil
}
