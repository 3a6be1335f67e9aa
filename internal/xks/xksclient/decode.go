package xksclient

import (
	"bytes"
	"encoding/json"
	"errors"
)

// decodeStrict decodes a success body: exactly one JSON object (unknown fields are
// ignored, as KMS must tolerate proxy additions), strict Base64 through xks.Blob.
// Messages never quote the body.
func decodeStrict(data []byte, v any) error {
	t := bytes.TrimLeft(data, " \t\r\n")
	if len(t) == 0 || t[0] != '{' {
		return errors.New("response body is not a JSON object")
	}
	if err := json.Unmarshal(data, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return errors.New("field " + te.Field + " has the wrong type")
		}
		return errors.New("response body is not valid JSON of the expected shape (or a binary field is not strict Base64)")
	}
	return nil
}

func missing(field string) error { return errors.New("missing required field " + field) }
