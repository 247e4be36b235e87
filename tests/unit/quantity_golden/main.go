// Command quantity_golden writes golden.json: how k8s.io/apimachinery parses and prints a
// broad set of quantity spellings, so gpufleet's Python parser can be checked against it.
//
//	cd tests/unit/quantity_golden && go run . > golden.json
package main

import (
	"encoding/json"
	"os"

	"k8s.io/apimachinery/pkg/api/resource"
)

type result struct {
	Input     string `json:"input"`
	OK        bool   `json:"ok"`
	String    string `json:"string,omitempty"`    // Quantity.String()
	Canonical string `json:"canonical,omitempty"` // the canonical form, ignoring a kept spelling
	Exact     string `json:"exact,omitempty"`     // the exact value as a decimal
	Value     int64  `json:"value,omitempty"`     // Quantity.Value()
	Milli     int64  `json:"milli,omitempty"`     // Quantity.MilliValue()
}

func inputs() []string {
	edge := []string{
		"0", "00", "-0", "+0", "0.0", "-", "+", ".", "-.", "+.", "1.", ".5", "-.5", "+1", "01",
		"001.500", "1e3", "1E3", "1e+3", "1e-3", "1e03", "1e", "1e+", "1ee3", "1e1.5", "1.5e2",
		"1Ki", "1Ki5", "1K", "1k", "1ki", "Ki", "-Ki", ".Ki", "1.Gi", "1.5Gi", "0.5Gi", "0.1Ki",
		"1023Ki", "1024Ki", "8Ki", "7Ki", "1536Mi", "16384Mi", "24Gi", "80Gi", "2Gi", "3Gi",
		"8Ei", "7Ei", "-8Ei", "9223372036854775807", "9223372036854775808", "92233720368547758070",
		"-9223372036854775808", "1000E", "10E", "999E", "1n", "0.1n", "1.5n", "-0.1n", "1u", "1m",
		"100m", "1000m", "1500m", "0.001", "0.0001", "1.0001", "1.5G", "1.5", "0.5", "12e6",
		"1e-12", ".e-20", "+e-20", "1e-20", "-1e-20", "1e18", "1e19", "1e21", "123456789e-9",
		"1234567890123456789", "12345678901234567890Ki", "0.000000001", "0.0000000001",
		"1.000000000000000000001", " 1", "1 ", "1.5.5", "1-", "--1", "+-1", "1Mi1", "1m3",
		"1e4294967296", "1e9223372036854775807",
		"1e9223372036854775808", "0x10", "1_000",
		"1Pi", "1Ti", "1P", "1T", "1E", "1Ei", "-1Ki", "-1024", "-1023Ki", "1.1Ki", "1023.5",
		"1024.5Ki", "1.0009765625Ki", "2.5e-1Ki", "5e-1", "50e-2", "0e5", "0Ki", "-0.000Gi",
	}
	numbers := []string{"0", "1", "2", "7", "8", "10", "12", "100", "999", "1000", "1024",
		"1536", "4096", "123456", "1.5", "0.5", "0.25", ".125", "3.14159", "100.000", "0.001",
		"1.", "000123", "999999999999999999", "9999999999999999999"}
	suffixes := []string{"", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi",
		"Ti", "Pi", "Ei", "e0", "e1", "e2", "e3", "e-1", "e-2", "e-3", "e-9", "e-10", "E6", "e+6",
		"e18", "e19"}
	out := edge
	for _, sign := range []string{"", "-", "+"} {
		for _, n := range numbers {
			for _, s := range suffixes {
				out = append(out, sign+n+s)
			}
		}
	}
	return out
}

func main() {
	var results []result
	for _, in := range inputs() {
		q, err := resource.ParseQuantity(in)
		if err != nil {
			results = append(results, result{Input: in})
			continue
		}
		r := result{Input: in, OK: true, String: q.String()}
		c := q.DeepCopy()
		c.Neg() // Neg forgets the kept spelling, so String() canonicalizes
		c.Neg()
		r.Canonical = c.String()
		d := q.DeepCopy()
		r.Exact = d.AsDec().String()
		r.Value = q.Value()
		r.Milli = q.MilliValue()
		results = append(results, r)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(results); err != nil {
		panic(err)
	}
}
