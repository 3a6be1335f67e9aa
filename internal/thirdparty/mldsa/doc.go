// Package mldsa is a copy of filippo.io/mldsa v1.0.0's internal
// implementation of ML-DSA (FIPS 204) — itself the Go standard library's
// crypto/internal/fips140/mldsa — kept so kmsd can verify a signature
// against an external message representative μ (Verify with MessageType
// EXTERNAL_MU), which the module's public API does not offer (it exports
// signing from μ only). Signing and the key types kmsd uses still come
// from the module itself; this copy serves VerifyMu alone.
//
// The files are upstream's, unchanged but for their import paths, one
// lint directive, and the build constraint of internal/fips140's
// enabled_standalone.go (the copy is always standalone). LICENSE is
// upstream's. To update, copy internal/fips140/mldsa, internal/byteorder,
// internal/constanttime and internal/fips140 from a newer module version
// again; drop the copy once the module or the standard library exports
// verification from μ.
package mldsa
