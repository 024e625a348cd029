// cdi-check: load a CDI spec directory with the CDI library container
// runtimes use (Debian's container-device-interface package), report what it
// found, and resolve CDI device names into OCI spec edits.
//
//	cdi-check -dir DIR [NAME ...]
//
// Prints one JSON object: the library's errors per spec file and per
// directory, the fully qualified devices it knows, and for each NAME the OCI
// spec that injecting that name alone into an empty spec produces (or the
// error). The test (tests/test_cdi.py) compares that with what sdplite wrote.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/container-orchestrated-devices/container-device-interface/pkg/cdi"
	oci "github.com/opencontainers/runtime-spec/specs-go"
)

type injected struct {
	Spec  *oci.Spec `json:"spec,omitempty"`
	Error string    `json:"error,omitempty"`
}

type report struct {
	Errors    map[string][]string `json:"errors"`
	DirErrors map[string]string   `json:"dir_errors"`
	Devices   []string            `json:"devices"`
	Versions  map[string]string   `json:"versions"`
	Injected  map[string]injected `json:"injected"`
}

func main() {
	dir := flag.String("dir", "", "the CDI spec directory to load")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "cdi-check: give -dir")
		os.Exit(2)
	}
	cache, err := cdi.NewCache(cdi.WithSpecDirs(*dir), cdi.WithAutoRefresh(false))
	if err != nil {
		fmt.Fprintln(os.Stderr, "cdi-check: NewCache:", err)
		os.Exit(1)
	}
	out := report{
		Errors:    map[string][]string{},
		DirErrors: map[string]string{},
		Devices:   cache.ListDevices(),
		Versions:  map[string]string{},
		Injected:  map[string]injected{},
	}
	for path, errs := range cache.GetErrors() {
		for _, e := range errs {
			out.Errors[path] = append(out.Errors[path], e.Error())
		}
	}
	for path, e := range cache.GetSpecDirErrors() {
		out.DirErrors[path] = e.Error()
	}
	for _, vendor := range cache.ListVendors() {
		for _, spec := range cache.GetVendorSpecs(vendor) {
			out.Versions[spec.GetPath()] = spec.Version
		}
	}
	for _, name := range flag.Args() {
		spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
		if _, err := cache.InjectDevices(spec, name); err != nil {
			out.Injected[name] = injected{Error: err.Error()}
		} else {
			out.Injected[name] = injected{Spec: spec}
		}
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "cdi-check:", err)
		os.Exit(1)
	}
}
