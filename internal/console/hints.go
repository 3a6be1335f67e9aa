package console

// hints are AWS's repair advice for each ConnectionErrorCode, from the
// ConnectionErrorCode documentation of DescribeCustomKeyStores (AWS KMS
// API Reference, CustomKeyStoresListEntry).
var hints = map[string]string{
	"CLUSTER_NOT_FOUND":                              "AWS KMS cannot find the AWS CloudHSM cluster with the specified cluster ID. The cluster may have been deleted: restore it from a backup, or associate the key store with a related cluster (UpdateCustomKeyStore with CloudHsmClusterId).",
	"INSUFFICIENT_CLOUDHSM_HSMS":                     "The associated AWS CloudHSM cluster does not contain any active HSMs. To connect a custom key store to its AWS CloudHSM cluster, the cluster must contain at least one active HSM.",
	"INSUFFICIENT_FREE_ADDRESSES_IN_SUBNET":          "At least one private subnet associated with the AWS CloudHSM cluster doesn't have any available IP addresses. A CloudHSM key store connection requires one free IP address for each associated private subnet, although two are preferable.",
	"INTERNAL_ERROR":                                 "AWS KMS could not complete the request due to an internal error. Retry the request. For ConnectCustomKeyStore requests, disconnect the custom key store before trying to connect again.",
	"NETWORK_ERRORS":                                 "Network errors are preventing AWS KMS from connecting to the custom key store. For a CloudHSM key store, check that the cluster's security group and network allow traffic between AWS KMS and the HSMs; for an external key store, check the network path to the external key store proxy.",
	"SUBNET_NOT_FOUND":                               "A subnet in the AWS CloudHSM cluster configuration was deleted. If AWS KMS cannot find all of the subnets in the cluster configuration, attempts to connect the custom key store to the AWS CloudHSM cluster fail. To fix this error, create a cluster from a recent backup and associate it with your custom key store.",
	"USER_LOCKED_OUT":                                "The kmsuser CU account is locked out of the associated AWS CloudHSM cluster due to too many failed password attempts. Before you can connect your custom key store to its AWS CloudHSM cluster, you must change the kmsuser account password and update the key store password value for the custom key store.",
	"USER_LOGGED_IN":                                 "The kmsuser CU account is logged into the associated AWS CloudHSM cluster. This prevents AWS KMS from rotating the kmsuser account password and logging into the cluster. Before you can connect your custom key store to its AWS CloudHSM cluster, you must log the kmsuser CU out of the cluster. If you changed the kmsuser password to log into the cluster, you must also update the key store password value for the custom key store.",
	"USER_NOT_FOUND":                                 "AWS KMS cannot find a kmsuser CU account in the associated AWS CloudHSM cluster. Before you can connect your custom key store to its AWS CloudHSM cluster, you must create a kmsuser CU account in the cluster, and then update the key store password value for the custom key store.",
	"XKS_PROXY_ACCESS_DENIED":                        "AWS KMS requests are denied access to the external key store proxy. If the external key store proxy has authorization rules, verify that they permit AWS KMS to communicate with the proxy on your behalf.",
	"XKS_PROXY_INVALID_CONFIGURATION":                "A configuration error exists with the external key store proxy or its backing key manager. Verify the proxy configuration and that the external key manager is available.",
	"XKS_PROXY_INVALID_RESPONSE":                     "AWS KMS cannot interpret the response from the external key store proxy. If you see this connection error code repeatedly, notify your external key store proxy vendor.",
	"XKS_PROXY_INVALID_TLS_CONFIGURATION":            "AWS KMS cannot connect to the external key store proxy because the TLS configuration is invalid. Verify that the external key store proxy supports TLS 1.2 or 1.3. Also, verify that the TLS certificate on the external key store proxy is valid and issued by a trusted certificate authority.",
	"XKS_PROXY_NOT_REACHABLE":                        "AWS KMS cannot communicate with the external key store proxy. Verify that the XksProxyUriEndpoint and XksProxyUriPath are correct. Use the tools for your external key store proxy to verify that the proxy is active and available on its network. Also, verify that your external key manager instances are operating properly. Connection attempts fail with this connection error code if the proxy reports that all external key manager instances are unavailable.",
	"XKS_PROXY_TIMED_OUT":                            "AWS KMS can connect to the external key store proxy, but the proxy does not respond to AWS KMS in the time allotted. If you see this connection error code repeatedly, notify your external key store proxy vendor.",
	"XKS_VPC_ENDPOINT_SERVICE_INVALID_CONFIGURATION": "The Amazon VPC endpoint service configuration doesn't conform to the requirements for an AWS KMS external key store: it must be an endpoint service for interface endpoints in the caller's Region, with private DNS enabled and a verified private DNS name, that allows AWS KMS as a principal and does not require acceptance of connection requests.",
	"XKS_VPC_ENDPOINT_SERVICE_NOT_FOUND":             "AWS KMS can't find the VPC endpoint service that it uses to communicate with the external key store proxy. Verify that the XksProxyVpcEndpointServiceName is correct and the AWS KMS service principal has service consumer permissions on the Amazon VPC endpoint service.",
}

// invalidCredentials differs by key store type.
const (
	hsmInvalidCredentials = "The kmsuser CU account password for the AWS CloudHSM cluster does not match the key store password that AWS KMS has. Update the key store password (UpdateCustomKeyStore with KeyStorePassword) to the current kmsuser password, then connect again."
	xksInvalidCredentials = "The proxy authentication credential for the external key store proxy is not valid: the proxy does not recognize it. Update XksProxyAuthenticationCredential with a credential the proxy accepts (UpdateCustomKeyStore), then connect again."
)

// Hint is AWS's repair advice for a key store of storeType failing with
// code ("" when code is empty).
func Hint(storeType, code string) string {
	if code == "INVALID_CREDENTIALS" {
		if storeType == "EXTERNAL_KEY_STORE" {
			return xksInvalidCredentials
		}
		return hsmInvalidCredentials
	}
	return hints[code]
}
