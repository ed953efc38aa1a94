// Command llmops-cluster is a multi-call binary holding every piece of the
// loopback Kubernetes control plane used by the llmops integration tests:
// kube-apiserver, etcd, kube-controller-manager, kube-scheduler, the kwok
// controller (simulated nodes and pods), helm, plus small helpers (certs,
// kwok-stages).
//
// It dispatches on the basename of argv[0] (so symlinks named after a
// component work) or, when called as llmops-cluster, on the first argument.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	_ "time/tzdata" // CronJob time zones

	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
)

// commands maps a component name to its entry point. Each receives the
// arguments after the component name; os.Args is rewritten beforehand to
// {name, args...} because several upstream packages read it directly.
var commands = map[string]func(args []string) int{
	"kube-apiserver":          runAPIServer,
	"kube-controller-manager": runControllerManager,
	"kube-scheduler":          runScheduler,
	"etcd":                    runEtcd,
	"kwok":                    runKwok,
	"kwok-stages":             runKwokStages,
	"helm":                    runHelm,
	"certs":                   runCerts,
}

func usage() {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: llmops-cluster <command> [args...]\n\ncommands:\n")
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %s\n", n)
	}
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := commands[name]; !ok {
		if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "llmops-cluster: unknown command %q\n\n", name)
		usage()
		os.Exit(2)
	}
	os.Args = append([]string{name}, args...)
	os.Exit(run(args))
}
