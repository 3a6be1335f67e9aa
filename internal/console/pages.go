package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

type obj = map[string]any

// route serves the pages of a signed-in session.
func (c *Console) route(w http.ResponseWriter, r *http.Request, s *session, path string) {
	seg := strings.Split(path, "/")
	get, post := r.Method == http.MethodGet, r.Method == http.MethodPost
	switch {
	case path == "" && get:
		c.serveOverview(w, r, s)
	case path == "logout" && post:
		c.endSession(w, r)
		http.Redirect(w, r, Prefix+"login", http.StatusSeeOther)
	case path == "keys" && get:
		c.serveKeys(w, r, s)
	case path == "keys" && post:
		c.createKey(w, r, s)
	case len(seg) == 2 && seg[0] == "keys" && get:
		c.serveKey(w, r, s, seg[1])
	case len(seg) == 2 && seg[0] == "keys" && post:
		c.keyAction(w, r, s, seg[1])
	case path == "stores" && get:
		c.serveStores(w, r, s)
	case path == "api/stores" && get:
		c.serveStoresJSON(w, r, s)
	case len(seg) == 2 && seg[0] == "stores" && post:
		c.storeAction(w, r, s, seg[1])
	case path == "clusters" && get:
		c.serveClusters(w, r, s)
	case path == "audit" && get:
		c.serveAudit(w, r, s)
	case len(seg) == 2 && seg[0] == "audit" && get:
		c.serveAuditRecord(w, r, s, seg[1])
	default:
		w.WriteHeader(http.StatusNotFound)
		c.page(w, r, s, "notfound", "Not found", obj{})
	}
}

// render executes page's layout with data.
func (c *Console) render(w http.ResponseWriter, page string, data obj) {
	var buf bytes.Buffer
	if err := c.pages[page].ExecuteTemplate(&buf, "layout", data); err != nil {
		c.cfg.Log.Error("console template", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Write(buf.Bytes())
}

// page renders a signed-in page, adding what every page shows.
func (c *Console) page(w http.ResponseWriter, r *http.Request, s *session, name, title string, data obj) {
	data["Title"], data["Nav"], data["Principal"], data["CSRF"] = title, name, s.principal, s.csrf
	c.mu.Lock()
	data["Flash"], s.flash = s.flash, nil
	c.mu.Unlock()
	c.render(w, name, data)
}

// done redirects to back after an action, with err (or success) shown
// once there.
func (c *Console) done(w http.ResponseWriter, r *http.Request, s *session, back, okMsg string, err error) {
	f := &flash{OK: err == nil, Message: okMsg}
	if err != nil {
		f.Code, f.Message = "InternalFailure", err.Error()
		if ae, ok := err.(*apiError); ok {
			f.Code, f.Message = ae.Code, ae.Message
		}
	}
	if r.Header.Get("Accept") == "application/json" {
		// console.js submitted the form itself: it shows the outcome
		// in place, without leaving the page.
		w.Header().Set("Content-Type", "application/json")
		if ae, ok := err.(*apiError); ok && ae.Status >= 400 {
			w.WriteHeader(ae.Status)
		} else if err != nil {
			w.WriteHeader(http.StatusInternalServerError)
		}
		json.NewEncoder(w).Encode(f)
		return
	}
	c.mu.Lock()
	s.flash = f
	c.mu.Unlock()
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// errText is how a section shows the error of the call that fills it.
func errText(err error) string {
	if err == nil {
		return ""
	}
	if ae, ok := err.(*apiError); ok {
		return ae.Code + ": " + ae.Message
	}
	return err.Error()
}

// ---- keys

type keyRow struct {
	Meta    obj
	Aliases []string
}

func (c *Console) serveKeys(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	f := obj{"alias": q.Get("alias"), "tag": q.Get("tag"), "state": q.Get("state"), "origin": q.Get("origin"), "store": q.Get("store")}
	data := obj{"Filter": f}
	var ids []string
	var marker string
	for range 10 { // at most 10 pages of 100
		in := obj{"Limit": 100}
		if marker != "" {
			in["Marker"] = marker
		}
		var out struct {
			Keys       []struct{ KeyId string }
			NextMarker string
			Truncated  bool
		}
		if err := c.kms(r, s, "ListKeys", in, &out); err != nil {
			data["Error"] = errText(err)
			break
		}
		for _, k := range out.Keys {
			ids = append(ids, k.KeyId)
		}
		if !out.Truncated {
			break
		}
		marker = out.NextMarker
	}
	aliases, _ := c.aliases(r, s, "")
	var rows []keyRow
	for _, id := range ids {
		var d struct{ KeyMetadata obj }
		if err := c.kms(r, s, "DescribeKey", obj{"KeyId": id}, &d); err != nil {
			continue // not allowed to describe it: not listed
		}
		m := d.KeyMetadata
		row := keyRow{Meta: m, Aliases: aliases[id]}
		if !matches(row, f) {
			continue
		}
		if tf := f["tag"].(string); tf != "" {
			tags, err := c.tags(r, s, id)
			if err != nil || !tagMatches(tags, tf) {
				continue
			}
		}
		rows = append(rows, row)
	}
	var stores struct{ CustomKeyStores []obj }
	c.kms(r, s, "DescribeCustomKeyStores", nil, &stores)
	data["Keys"], data["Stores"] = rows, stores.CustomKeyStores
	data["KeySpecs"] = []string{"SYMMETRIC_DEFAULT", "RSA_2048", "RSA_3072", "RSA_4096", "ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521", "ECC_SECG_P256K1", "HMAC_224", "HMAC_256", "HMAC_384", "HMAC_512"}
	c.page(w, r, s, "keys", "Keys", data)
}

// matches applies the keys page's filters other than tags.
func matches(k keyRow, f obj) bool {
	if a := f["alias"].(string); a != "" {
		ok := false
		for _, n := range k.Aliases {
			if strings.Contains(strings.ToLower(n), strings.ToLower(a)) {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	for field, member := range map[string]string{"state": "KeyState", "origin": "Origin", "store": "CustomKeyStoreId"} {
		if v := f[field].(string); v != "" && str(k.Meta[member]) != v {
			return false
		}
	}
	return true
}

// tagMatches: filter "k" matches a tag k, "k=v" a tag k with value v.
func tagMatches(tags []obj, filter string) bool {
	k, v, hasV := strings.Cut(filter, "=")
	for _, t := range tags {
		if str(t["TagKey"]) == k && (!hasV || str(t["TagValue"]) == v) {
			return true
		}
	}
	return false
}

// aliases maps key ids to their alias names (of one key if keyID is set).
func (c *Console) aliases(r *http.Request, s *session, keyID string) (map[string][]string, error) {
	out := map[string][]string{}
	marker := ""
	for range 10 {
		in := obj{"Limit": 100}
		if keyID != "" {
			in["KeyId"] = keyID
		}
		if marker != "" {
			in["Marker"] = marker
		}
		var res struct {
			Aliases    []struct{ AliasName, TargetKeyId string }
			NextMarker string
			Truncated  bool
		}
		if err := c.kms(r, s, "ListAliases", in, &res); err != nil {
			return out, err
		}
		for _, a := range res.Aliases {
			if a.TargetKeyId != "" {
				out[a.TargetKeyId] = append(out[a.TargetKeyId], a.AliasName)
			}
		}
		if !res.Truncated {
			break
		}
		marker = res.NextMarker
	}
	return out, nil
}

func (c *Console) tags(r *http.Request, s *session, keyID string) ([]obj, error) {
	var res struct{ Tags []obj }
	err := c.kms(r, s, "ListResourceTags", obj{"KeyId": keyID, "Limit": 50}, &res)
	return res.Tags, err
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, s *session) {
	f := r.PostForm
	in := obj{}
	for field, member := range map[string]string{"description": "Description", "key_spec": "KeySpec", "key_usage": "KeyUsage",
		"origin": "Origin", "custom_key_store_id": "CustomKeyStoreId", "xks_key_id": "XksKeyId"} {
		if v := strings.TrimSpace(f.Get(field)); v != "" {
			in[member] = v
		}
	}
	var out struct{ KeyMetadata struct{ KeyId string } }
	if err := c.kms(r, s, "CreateKey", in, &out); err != nil {
		c.done(w, r, s, Prefix+"keys", "", err)
		return
	}
	id := out.KeyMetadata.KeyId
	msg := "Key " + id + " created."
	if a := strings.TrimSpace(f.Get("alias")); a != "" {
		if !strings.HasPrefix(a, "alias/") {
			a = "alias/" + a
		}
		if err := c.kms(r, s, "CreateAlias", obj{"AliasName": a, "TargetKeyId": id}, nil); err != nil {
			c.done(w, r, s, Prefix+"keys/"+url.PathEscape(id), "", fmt.Errorf("key %s created, but its alias was not: %w", id, err))
			return
		}
		msg = "Key " + id + " created with alias " + a + "."
	}
	c.done(w, r, s, Prefix+"keys/"+url.PathEscape(id), msg, nil)
}

func (c *Console) serveKey(w http.ResponseWriter, r *http.Request, s *session, id string) {
	data := obj{}
	var d struct{ KeyMetadata obj }
	if err := c.kms(r, s, "DescribeKey", obj{"KeyId": id}, &d); err != nil {
		if ae, ok := err.(*apiError); ok {
			w.WriteHeader(ae.Status)
		}
		data["Error"] = errText(err)
		c.page(w, r, s, "key", "Key "+id, data)
		return
	}
	m := d.KeyMetadata
	id = str(m["KeyId"])
	data["Key"] = m
	data["Fields"] = metaFields(m)
	var pol struct{ Policy string }
	if err := c.kms(r, s, "GetKeyPolicy", obj{"KeyId": id, "PolicyName": "default"}, &pol); err != nil {
		data["PolicyError"] = errText(err)
	} else {
		data["Policy"] = prettyJSON(pol.Policy)
	}
	var grants struct{ Grants []obj }
	if err := c.kms(r, s, "ListGrants", obj{"KeyId": id, "Limit": 100}, &grants); err != nil {
		data["GrantsError"] = errText(err)
	}
	data["Grants"] = grants.Grants
	var rot obj
	if err := c.kms(r, s, "GetKeyRotationStatus", obj{"KeyId": id}, &rot); err != nil {
		data["RotationError"] = errText(err)
	} else {
		data["Rotation"] = rot
		var rots struct{ Rotations []obj }
		if err := c.kms(r, s, "ListKeyRotations", obj{"KeyId": id, "Limit": 100}, &rots); err == nil {
			data["Rotations"] = rots.Rotations
		}
	}
	al, err := c.aliases(r, s, id)
	if err != nil {
		data["AliasesError"] = errText(err)
	}
	data["Aliases"] = al[id]
	tags, err := c.tags(r, s, id)
	if err != nil {
		data["TagsError"] = errText(err)
	}
	data["Tags"] = tags
	title := "Key " + id
	if len(al[id]) > 0 {
		title = al[id][0] + " (" + id + ")"
	}
	c.page(w, r, s, "key", title, data)
}

// metaFields lists a key's metadata members in a fixed order, then the
// rest, as label and display value.
func metaFields(m obj) [][2]string {
	order := []string{"KeyId", "Arn", "Description", "KeyState", "Enabled", "KeyUsage", "KeySpec", "Origin", "KeyManager",
		"CustomKeyStoreId", "CloudHsmClusterId", "CreationDate", "DeletionDate", "PendingDeletionWindowInDays", "ValidTo",
		"ExpirationModel", "MultiRegion", "CurrentKeyMaterialId", "AWSAccountId"}
	seen := map[string]bool{}
	var out [][2]string
	add := func(k string) {
		v, ok := m[k]
		if !ok || seen[k] {
			return
		}
		seen[k] = true
		out = append(out, [2]string{k, display(k, v)})
	}
	for _, k := range order {
		add(k)
	}
	var rest []string
	for k := range m {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	for _, k := range rest {
		add(k)
	}
	return out
}

// display formats a member: dates (epoch seconds) as UTC times, lists
// and objects as compact JSON.
func display(name string, v any) string {
	switch x := v.(type) {
	case float64:
		if strings.HasSuffix(name, "Date") || name == "ValidTo" {
			return epoch(x)
		}
		return strconv.FormatFloat(x, 'f', -1, 64)
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func epoch(x float64) string {
	return time.Unix(int64(x), 0).UTC().Format("2006-01-02 15:04:05 UTC")
}

func prettyJSON(s string) string {
	var b bytes.Buffer
	if json.Indent(&b, []byte(s), "", "  ") != nil {
		return s
	}
	return b.String()
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// keyActions maps the key page's buttons to KMS operations and inputs.
var keyActions = map[string]func(id string, f url.Values) (op string, in obj, ok string){
	"enable": func(id string, _ url.Values) (string, obj, string) {
		return "EnableKey", obj{"KeyId": id}, "Key enabled."
	},
	"disable": func(id string, _ url.Values) (string, obj, string) {
		return "DisableKey", obj{"KeyId": id}, "Key disabled."
	},
	"schedule-deletion": func(id string, f url.Values) (string, obj, string) {
		in := obj{"KeyId": id}
		if d, err := strconv.Atoi(f.Get("days")); err == nil {
			in["PendingWindowInDays"] = d
		}
		return "ScheduleKeyDeletion", in, "Key deletion scheduled."
	},
	"cancel-deletion": func(id string, _ url.Values) (string, obj, string) {
		return "CancelKeyDeletion", obj{"KeyId": id}, "Key deletion cancelled; the key is disabled until you enable it."
	},
	"put-policy": func(id string, f url.Values) (string, obj, string) {
		return "PutKeyPolicy", obj{"KeyId": id, "PolicyName": "default", "Policy": f.Get("policy")}, "Key policy saved."
	},
	"enable-rotation": func(id string, f url.Values) (string, obj, string) {
		in := obj{"KeyId": id}
		if d, err := strconv.Atoi(f.Get("period")); err == nil {
			in["RotationPeriodInDays"] = d
		}
		return "EnableKeyRotation", in, "Automatic rotation enabled."
	},
	"disable-rotation": func(id string, _ url.Values) (string, obj, string) {
		return "DisableKeyRotation", obj{"KeyId": id}, "Automatic rotation disabled."
	},
	"rotate-now": func(id string, _ url.Values) (string, obj, string) {
		return "RotateKeyOnDemand", obj{"KeyId": id}, "On-demand rotation started."
	},
	"create-alias": func(id string, f url.Values) (string, obj, string) {
		a := strings.TrimSpace(f.Get("alias"))
		if !strings.HasPrefix(a, "alias/") {
			a = "alias/" + a
		}
		return "CreateAlias", obj{"AliasName": a, "TargetKeyId": id}, "Alias " + a + " created."
	},
	"delete-alias": func(_ string, f url.Values) (string, obj, string) {
		return "DeleteAlias", obj{"AliasName": f.Get("alias")}, "Alias " + f.Get("alias") + " deleted."
	},
	"tag": func(id string, f url.Values) (string, obj, string) {
		return "TagResource", obj{"KeyId": id, "Tags": []obj{{"TagKey": f.Get("tag_key"), "TagValue": f.Get("tag_value")}}}, "Tag saved."
	},
	"untag": func(id string, f url.Values) (string, obj, string) {
		return "UntagResource", obj{"KeyId": id, "TagKeys": []string{f.Get("tag_key")}}, "Tag removed."
	},
	"description": func(id string, f url.Values) (string, obj, string) {
		return "UpdateKeyDescription", obj{"KeyId": id, "Description": f.Get("description")}, "Description saved."
	},
	"revoke-grant": func(id string, f url.Values) (string, obj, string) {
		return "RevokeGrant", obj{"KeyId": id, "GrantId": f.Get("grant_id")}, "Grant revoked."
	},
}

func (c *Console) keyAction(w http.ResponseWriter, r *http.Request, s *session, id string) {
	back := Prefix + "keys/" + url.PathEscape(id)
	act, ok := keyActions[r.PostForm.Get("action")]
	if !ok {
		c.done(w, r, s, back, "", &apiError{Code: "ValidationException", Message: "Unknown action."})
		return
	}
	op, in, msg := act(id, r.PostForm)
	err := c.kms(r, s, op, in, nil)
	if err != nil && op == "PutKeyPolicy" {
		// Keep the draft, so the user can fix it.
		defer func() {
			c.mu.Lock()
			if s.flash != nil {
				s.flash.Draft = r.PostForm.Get("policy")
			}
			c.mu.Unlock()
		}()
	}
	if sec := r.PostForm.Get("section"); sec != "" && strings.Trim(sec, "abcdefghijklmnopqrstuvwxyz-") == "" {
		back += "#" + sec // the page section to return to
	}
	c.done(w, r, s, back, msg, err)
}

// ---- custom key stores

// storeView is one key store as the stores page and its JSON show it.
type storeView struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Type      string `json:"type"`
	Backing   string `json:"backing"`
	State     string `json:"state"`
	ErrorCode string `json:"errorCode"`
	Hint      string `json:"hint"`
	Created   string `json:"created"`
	Raw       obj    `json:"-"`
}

func (c *Console) stores(r *http.Request, s *session) ([]storeView, error) {
	var out struct{ CustomKeyStores []obj }
	if err := c.kms(r, s, "DescribeCustomKeyStores", obj{"Limit": 1000}, &out); err != nil {
		return nil, err
	}
	var vs []storeView
	for _, e := range out.CustomKeyStores {
		v := storeView{ID: str(e["CustomKeyStoreId"]), Name: str(e["CustomKeyStoreName"]), Type: str(e["CustomKeyStoreType"]),
			State: str(e["ConnectionState"]), ErrorCode: str(e["ConnectionErrorCode"]), Raw: e}
		if v.Type == "" {
			v.Type = "AWS_CLOUDHSM"
		}
		if x, ok := e["XksProxyConfiguration"].(map[string]any); ok {
			v.Backing = str(x["UriEndpoint"]) + str(x["UriPath"]) + " (" + str(x["Connectivity"]) + ")"
			if vpc := str(x["VpcEndpointServiceName"]); vpc != "" {
				v.Backing += " via " + vpc
			}
		} else {
			v.Backing = str(e["CloudHsmClusterId"])
		}
		if d, ok := e["CreationDate"].(float64); ok {
			v.Created = epoch(d)
		}
		v.Hint = Hint(v.Type, v.ErrorCode)
		vs = append(vs, v)
	}
	return vs, nil
}

func (c *Console) serveStores(w http.ResponseWriter, r *http.Request, s *session) {
	data := obj{}
	vs, err := c.stores(r, s)
	if err != nil {
		data["Error"] = errText(err)
	}
	data["Stores"] = vs
	c.page(w, r, s, "stores", "Custom key stores", data)
}

// serveStoresJSON is what the stores page polls.
func (c *Console) serveStoresJSON(w http.ResponseWriter, r *http.Request, s *session) {
	w.Header().Set("Content-Type", "application/json")
	vs, err := c.stores(r, s)
	if err != nil {
		ae, _ := err.(*apiError)
		status := http.StatusInternalServerError
		if ae != nil {
			status = ae.Status
		}
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(obj{"error": errText(err)})
		return
	}
	json.NewEncoder(w).Encode(obj{"stores": vs})
}

func (c *Console) storeAction(w http.ResponseWriter, r *http.Request, s *session, id string) {
	f := r.PostForm
	back := Prefix + "stores"
	var op, msg string
	in := obj{"CustomKeyStoreId": id}
	switch f.Get("action") {
	case "connect":
		op, msg = "ConnectCustomKeyStore", "Connecting "+id+"."
	case "disconnect":
		op, msg = "DisconnectCustomKeyStore", "Disconnecting "+id+"."
	case "update":
		op, msg = "UpdateCustomKeyStore", "Key store "+id+" updated."
		for field, member := range map[string]string{"name": "NewCustomKeyStoreName", "password": "KeyStorePassword",
			"cluster": "CloudHsmClusterId", "endpoint": "XksProxyUriEndpoint", "path": "XksProxyUriPath"} {
			if v := strings.TrimSpace(f.Get(field)); v != "" {
				in[member] = v
			}
		}
		if a, sec := strings.TrimSpace(f.Get("xks_access_key_id")), f.Get("xks_secret"); a != "" || sec != "" {
			in["XksProxyAuthenticationCredential"] = obj{"AccessKeyId": a, "RawSecretAccessKey": sec}
		}
	default:
		c.done(w, r, s, back, "", &apiError{Code: "ValidationException", Message: "Unknown action."})
		return
	}
	c.done(w, r, s, back, msg, c.kms(r, s, op, in, nil))
}

// ---- HSM clusters

func (c *Console) serveClusters(w http.ResponseWriter, r *http.Request, s *session) {
	data := obj{}
	var clusters []obj
	next := ""
	for range 20 { // 25 a page, CloudHSM's maximum
		in := obj{"MaxResults": 25}
		if next != "" {
			in["NextToken"] = next
		}
		var out struct {
			Clusters  []obj
			NextToken string
		}
		if err := c.hsm(r, s, "DescribeClusters", in, &out); err != nil {
			data["Error"] = errText(err)
			break
		}
		clusters = append(clusters, out.Clusters...)
		if next = out.NextToken; next == "" {
			break
		}
	}
	data["Clusters"] = clusters
	c.page(w, r, s, "clusters", "HSM clusters", data)
}

// templateFuncs are the pages' helpers.
var templateFuncs = template.FuncMap{
	"str": str,
	"states": func() []string {
		return []string{"Enabled", "Disabled", "PendingDeletion", "PendingImport", "PendingReplicaDeletion", "Unavailable", "Creating", "Updating"}
	},
	"origins": func() []string { return []string{"AWS_KMS", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE", "EXTERNAL"} },
	"date": func(v any) string {
		if f, ok := v.(float64); ok {
			return epoch(f)
		}
		return ""
	},
	"show": func(v any) string { return display("", v) },
	"json": func(v any) string {
		b, _ := json.MarshalIndent(v, "", "  ")
		return string(b)
	},
}

// parsePages parses each page with the layout.
func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("").Funcs(templateFuncs).ParseFS(templateFS, "templates/layout.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, p := range []string{"login", "refused", "notfound", "overview", "keys", "key", "stores", "clusters", "audit", "record"} {
		t, err := base.Clone()
		if err != nil {
			return nil, err
		}
		if pages[p], err = t.ParseFS(templateFS, "templates/"+p+".html"); err != nil {
			return nil, err
		}
	}
	return pages, nil
}
