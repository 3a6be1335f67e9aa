package catalog

// VersionMaterialID returns the KeyMaterialId of version v of k: the one
// stored with the version, or, for a version written before kmsd stored
// them, MaterialID of its material, computed once by opening the sealed
// material and then kept in memory. Nothing is written back: the id is a
// pure function of the key id and the material, so computing it again
// after a restart gives the same answer.
func (c *Catalog) VersionMaterialID(k *Key, v uint32) (string, error) {
	ver := k.Version(v)
	if ver == nil {
		return "", ErrNotFound
	}
	if ver.MaterialID != "" {
		return ver.MaterialID, nil
	}
	// Keyed by the sealed bytes, which are unique to one sealing (a fresh
	// nonce each time): a record replaced by another can never be served
	// the id of its predecessor.
	if id, ok := c.mids.Load(string(ver.Sealed)); ok {
		return id.(string), nil
	}
	material, err := c.Material(k, v)
	if err != nil {
		return "", err
	}
	defer clear(material)
	id := c.MaterialID(k.ID, material)
	c.mids.Store(string(ver.Sealed), id)
	return id, nil
}
