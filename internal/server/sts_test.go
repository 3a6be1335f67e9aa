package server

import (
	"net/url"
	"reflect"
	"testing"

	"github.com/kmsd/kmsd/internal/identity"
)

// assumeRoleForms are AssumeRole request bodies with what they decode to
// (nil when refused). They seed FuzzAssumeRoleInput.
var assumeRoleForms = []struct {
	name, body string
	want       *identity.AssumeRoleInput
}{
	{"minimal", "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fr&RoleSessionName=s1",
		&identity.AssumeRoleInput{RoleARN: "arn:aws:iam::111122223333:role/r", RoleSessionName: "s1"}},
	{"everything", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&DurationSeconds=900&Policy=%7B%7D&ExternalId=x1" +
		"&PolicyArns.member.2.arn=p2&PolicyArns.member.1.arn=p1&Tags.member.1.Key=k1&Tags.member.1.Value=v1" +
		"&Tags.member.2.Key=k2&Tags.member.2.Value=&TransitiveTagKeys.member.1=k1&SourceIdentity=alice",
		&identity.AssumeRoleInput{RoleARN: "a", RoleSessionName: "s", DurationSeconds: ptr(int64(900)), Policy: ptr("{}"),
			ExternalID: ptr("x1"), PolicyARNs: []string{"p1", "p2"}, Tags: []identity.Tag{{Key: "k1", Value: "v1"}, {Key: "k2"}},
			TransitiveTagKeys: []string{"k1"}, SourceIdentity: ptr("alice")}},
	{"empty lists", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&PolicyArns=&Tags=&TransitiveTagKeys=",
		&identity.AssumeRoleInput{RoleARN: "a", RoleSessionName: "s"}},
	{"empty external id is kept", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&ExternalId=",
		&identity.AssumeRoleInput{RoleARN: "a", RoleSessionName: "s", ExternalID: ptr("")}},
	{"mfa is passed on to be refused", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&SerialNumber=sn&TokenCode=123456",
		&identity.AssumeRoleInput{RoleARN: "a", RoleSessionName: "s", SerialNumber: ptr("sn"), TokenCode: ptr("123456")}},
	{"provided contexts", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&ProvidedContexts.member.1.ProviderArn=x&ProvidedContexts.member.1.ContextAssertion=y",
		&identity.AssumeRoleInput{RoleARN: "a", RoleSessionName: "s", ProvidedContexts: 1}},
	{"unknown parameter", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&Bogus=1", nil},
	{"unknown list member", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&Tags.member.1.Colour=red", nil},
	{"bad index", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&PolicyArns.member.0.arn=p", nil},
	{"duration not a number", "Action=AssumeRole&RoleArn=a&RoleSessionName=s&DurationSeconds=soon", nil},
}

func ptr[T any](v T) *T { return &v }

func TestAssumeRoleInput(t *testing.T) {
	for _, c := range assumeRoleForms {
		t.Run(c.name, func(t *testing.T) {
			form, err := url.ParseQuery(c.body)
			if err != nil {
				t.Fatal(err)
			}
			got, err := assumeRoleInput(form)
			if c.want == nil {
				if err == nil {
					t.Fatalf("assumeRoleInput = %+v, want an error", got)
				}
				if qe := toQueryError(err); qe.Code != "ValidationError" || qe.Status != 400 {
					t.Errorf("error %+v, want a ValidationError", qe)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func FuzzAssumeRoleInput(f *testing.F) {
	for _, c := range assumeRoleForms {
		f.Add(c.body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		form, err := url.ParseQuery(body)
		if err != nil {
			return
		}
		in, err := assumeRoleInput(form)
		if err == nil && in == nil {
			t.Fatal("no input and no error")
		}
	})
}
