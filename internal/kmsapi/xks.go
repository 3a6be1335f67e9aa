package kmsapi

import "regexp"

// kmsd extension: XksProxyUriEndpoint may carry a port (https://host:port)
// for self-hosted proxies; AWS's model pattern (https://host, port 443 only)
// is widened accordingly. The generated validator uses this variable.
func init() {
	patternXksProxyUriEndpointType = regexp.MustCompile(`^https://[a-zA-Z0-9.-]+(:[0-9]{1,5})?$`)
}
