package cli

import (
	"context"
	"encoding/base64"
	"strings"

	"github.com/kmsd/kmsd/internal/cli/model"
)

// pageResult is what botocore's PageIterator produced: the pages (as
// possibly truncated), and the resume token when --max-items stopped
// short.
type pageResult struct {
	pages       []any
	resumeToken string
	hasResume   bool
}

type pageConfig struct {
	pageSize      *int64
	maxItems      *int64
	startingToken *string
}

// paginate is botocore's PageIterator.__iter__, collected eagerly.
func paginate(ctx context.Context, c *client, op *model.Operation, params *Object, pc pageConfig) (*pageResult, error) {
	p := op.Paginator
	res := &pageResult{}
	nextToken := NewObject()
	for _, k := range p.InputToken {
		nextToken.Set(k, nil)
	}
	startTrunc := int64(0)
	if pc.startingToken != nil {
		tok, idx, err := decodeToken(*pc.startingToken)
		if err != nil {
			return nil, err
		}
		nextToken, startTrunc = tok, idx
		injectToken(params, nextToken)
	}
	if pc.pageSize != nil {
		params.Set(p.LimitKey, *pc.pageSize)
	}
	primary := p.ResultKeys[0]
	total := int64(0)
	first := true
	var prev string
	for {
		if err := validateParams(c.svc, params, op.Input); err != nil {
			return nil, err
		}
		v, err := c.call(ctx, op, params)
		if err != nil {
			return nil, err
		}
		page, _ := v.(*Object)
		if page == nil {
			page = NewObject()
		}
		truncStart := int64(0)
		if first {
			if pc.startingToken != nil {
				truncStart = startTrunc
				if l, ok := lookup(page, primary).([]any); ok {
					if truncStart > int64(len(l)) {
						truncStart = int64(len(l))
					}
					setPath(page, primary, l[truncStart:])
				} else if s, ok := lookup(page, primary).(string); ok {
					setPath(page, primary, s[min(int(truncStart), len(s)):])
				} else {
					setPath(page, primary, nil)
				}
				for _, rk := range p.ResultKeys[1:] {
					switch lookup(page, rk).(type) {
					case []any:
						setPath(page, rk, []any{})
					case string:
						setPath(page, rk, "")
					case int64, float64:
						setPath(page, rk, int64(0))
					default:
						setPath(page, rk, nil)
					}
				}
			}
			first = false
		}
		cur, _ := lookup(page, primary).([]any)
		n := int64(len(cur))
		if pc.maxItems != nil && total+n-*pc.maxItems > 0 {
			keep := n - (total + n - *pc.maxItems)
			setPath(page, primary, cur[:keep])
			nextToken.Set("boto_truncate_amount", keep+truncStart)
			res.resumeToken, res.hasResume = encodeToken(nextToken), true
			res.pages = append(res.pages, page)
			break
		}
		res.pages = append(res.pages, page)
		total += n
		nt := getNextToken(page, p)
		done := true
		for _, k := range nt.Keys {
			if nt.M[k] != nil {
				done = false
			}
		}
		if done {
			break
		}
		if pc.maxItems != nil && total == *pc.maxItems {
			res.resumeToken, res.hasResume = encodeToken(nt), true
			break
		}
		enc := encodeToken(nt)
		if prev != "" && prev == enc {
			return nil, &generalError{"Error during pagination: The same next token was received twice: " + pyRepr(nt)}
		}
		prev = enc
		injectToken(params, nt)
		nextToken = nt
	}
	return res, nil
}

func getNextToken(page *Object, p *model.Paginator) *Object {
	out := NewObject()
	if p.MoreResults != "" {
		if !truthy(lookup(page, p.MoreResults)) {
			return out
		}
	}
	for i, ot := range p.OutputToken {
		v := lookup(page, ot)
		if truthy(v) {
			out.Set(p.InputToken[i], v)
		} else {
			out.Set(p.InputToken[i], nil)
		}
	}
	return out
}

func truthy(v any) bool { return !isEmptyValue(v) }

func injectToken(params, tok *Object) {
	for _, k := range tok.Keys {
		if k == "boto_truncate_amount" {
			continue
		}
		if v := tok.M[k]; v != nil && v != "None" {
			params.Set(k, v)
		} else {
			params.Delete(k)
		}
	}
}

// encodeToken is botocore's TokenEncoder: base64 of json.dumps.
func encodeToken(tok *Object) string {
	var b strings.Builder
	pyJSON(&b, tok, -1, true)
	return base64.StdEncoding.EncodeToString([]byte(b.String()))
}

func decodeToken(s string) (*Object, int64, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err == nil {
		if v, err := decodeJSON(raw); err == nil {
			if o, ok := v.(*Object); ok {
				idx := int64(0)
				if n, ok := o.Get("boto_truncate_amount"); ok {
					idx, _ = n.(int64)
					o.Delete("boto_truncate_amount")
				}
				return o, idx, nil
			}
		}
	}
	// botocore's deprecated form: tokens joined by "___", then an index.
	parts := strings.Split(s, "___")
	o := NewObject()
	o.Set("Marker", parts[0])
	return o, 0, nil
}

// lookup and setPath handle the dotted result-key expressions of
// paginators.
func lookup(o *Object, path string) any {
	var cur any = o
	for _, part := range strings.Split(path, ".") {
		ob, ok := cur.(*Object)
		if !ok {
			return nil
		}
		cur = ob.M[part]
	}
	return cur
}

func setPath(o *Object, path string, v any) {
	parts := strings.Split(path, ".")
	cur := o
	for _, part := range parts[:len(parts)-1] {
		next, ok := cur.M[part].(*Object)
		if !ok {
			next = NewObject()
			cur.Set(part, next)
		}
		cur = next
	}
	cur.Set(parts[len(parts)-1], v)
}

// fullResult is PageIterator.build_full_result.
func fullResult(p *model.Paginator, r *pageResult) *Object {
	out := NewObject()
	for _, page := range r.pages {
		po := page.(*Object)
		for _, rk := range p.ResultKeys {
			v := lookup(po, rk)
			if v == nil {
				continue
			}
			existing := lookup(out, rk)
			if existing == nil {
				if l, ok := v.([]any); ok {
					v = append([]any{}, l...)
				}
				setPath(out, rk, v)
				continue
			}
			switch ev := existing.(type) {
			case []any:
				if l, ok := v.([]any); ok {
					setPath(out, rk, append(ev, l...))
				}
			case string:
				if s, ok := v.(string); ok {
					setPath(out, rk, ev+s)
				}
			case int64:
				if n, ok := v.(int64); ok {
					setPath(out, rk, ev+n)
				}
			}
		}
	}
	if len(r.pages) > 0 {
		for _, k := range p.NonAggregateKeys {
			if v := lookup(r.pages[0].(*Object), k); v != nil {
				setPath(out, k, v)
			}
		}
	}
	if r.hasResume {
		out.Set("NextToken", r.resumeToken)
	}
	return out
}
