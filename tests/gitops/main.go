// Command gitops-health evaluates live llmops objects the way Argo CD and Flux
// judge them, and checks the verdicts against what a test expects:
//
//   - Argo CD: the health.lua of deploy/argocd/resource_customizations, run by
//     Argo CD's own Lua evaluation (github.com/argoproj/argo-cd/v3/util/lua), as
//     a resource override from argocd-cm (`resource.customizations.health.<group>_<Kind>`).
//   - Flux (and kubectl/kpt waits): kstatus, sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute.
//
// Usage: gitops-health <dir of resource_customizations> <cases.json>
//
// cases.json is a list of {"file": "<object as JSON>", "argo": "Healthy", "kstatus": "Current"};
// an empty expectation is not checked. Prints one line per case; exits 1 when a
// verdict differs.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	appv1 "github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	argolua "github.com/argoproj/argo-cd/v3/util/lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type testCase struct {
	File    string `json:"file"`
	Argo    string `json:"argo"`
	Kstatus string `json:"kstatus"`
}

type verdict struct {
	File           string `json:"file"`
	Kind           string `json:"kind"`
	Name           string `json:"name"`
	Argo           string `json:"argo"`
	ArgoMessage    string `json:"argoMessage"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Ok             bool   `json:"ok"`
}

// overrides reads <dir>/<group>/<Kind>/health.lua for the object's kind, keyed as
// Argo CD keys the overrides of argocd-cm.
func overrides(dir string, obj *unstructured.Unstructured) (argolua.ResourceHealthOverrides, error) {
	gvk := obj.GroupVersionKind()
	script, err := os.ReadFile(filepath.Join(dir, gvk.Group, gvk.Kind, "health.lua"))
	if err != nil {
		return nil, err
	}
	return argolua.ResourceHealthOverrides{
		argolua.GetConfigMapKey(gvk): appv1.ResourceOverride{HealthLua: string(script)},
	}, nil
}

func evaluate(dir string, c testCase) (verdict, error) {
	v := verdict{File: c.File}
	data, err := os.ReadFile(c.File)
	if err != nil {
		return v, err
	}
	// As client-go decodes objects for Argo CD and Flux: integers as int64.
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		return v, fmt.Errorf("%s: %w", c.File, err)
	}
	v.Kind, v.Name = obj.GetKind(), obj.GetName()

	o, err := overrides(dir, obj)
	if err != nil {
		return v, err
	}
	health, err := o.GetResourceHealth(obj)
	if err != nil {
		return v, fmt.Errorf("%s: health.lua: %w", c.File, err)
	}
	if health == nil {
		return v, fmt.Errorf("%s: no health script for %s", c.File, obj.GroupVersionKind())
	}
	v.Argo, v.ArgoMessage = string(health.Status), health.Message

	result, err := status.Compute(obj)
	if err != nil {
		return v, fmt.Errorf("%s: kstatus: %w", c.File, err)
	}
	v.Kstatus, v.KstatusMessage = result.Status.String(), result.Message

	v.Ok = (c.Argo == "" || c.Argo == v.Argo) && (c.Kstatus == "" || c.Kstatus == v.Kstatus)
	return v, nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: gitops-health <dir of resource_customizations> <cases.json>")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var cases []testCase
	if err := json.Unmarshal(data, &cases); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	failed := false
	for _, c := range cases {
		v, err := evaluate(os.Args[1], c)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		mark := "ok"
		if !v.Ok {
			mark = fmt.Sprintf("MISMATCH (expected argo %q, kstatus %q)", c.Argo, c.Kstatus)
			failed = true
		}
		fmt.Printf("%s %s: argo %s (%s); kstatus %s (%s): %s\n",
			v.Kind, v.Name, v.Argo, v.ArgoMessage, v.Kstatus, v.KstatusMessage, mark)
	}
	if failed {
		os.Exit(1)
	}
}
