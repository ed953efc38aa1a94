package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodeheartbeat "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
	"sigs.k8s.io/kwok/pkg/config"
	kwokcmd "sigs.k8s.io/kwok/pkg/kwok/cmd"
	"sigs.k8s.io/kwok/pkg/log"
	"sigs.k8s.io/kwok/pkg/utils/signals"
)

// runKwok is the kwok controller, wired as upstream's cmd/kwok does.
func runKwok(args []string) int {
	// Kubernetes packages linked into this binary register global flags
	// (e.g. a non-bool "version") that cobra would merge into kwok's own
	// and that clash with kwok's --version; give kwok a clean global set.
	pflag.CommandLine = pflag.NewFlagSet("kwok", pflag.ExitOnError)

	flagset := pflag.NewFlagSet("global", pflag.ContinueOnError)
	flagset.ParseErrorsAllowlist.UnknownFlags = true
	flagset.Usage = func() {}

	ctx := signals.SetupSignalContext()
	ctx, logger := log.InitFlags(ctx, flagset)

	// config.InitFlags reads --config from os.Args (already rewritten by main).
	ctx, err := config.InitFlags(ctx, flagset)
	if err != nil {
		_, _ = os.Stderr.Write([]byte(flagset.FlagUsages()))
		logger.Error("Init config flags", "err", err)
		return 1
	}

	command := kwokcmd.NewCommand(ctx)
	command.PersistentFlags().AddFlagSet(flagset)
	command.SetArgs(args)
	if err := command.ExecuteContext(ctx); err != nil {
		logger.Error("Execute exit", "err", err)
		return 1
	}
	return 0
}

// servingLabel marks the pods a ModelDeployment serves with.
const servingLabel = `.metadata.labels["llmops.dev/modeldeployment"]`

// deletionExpression is the first match expression of the stock pod stages.
const deletionExpression = "    - key: '.metadata.deletionTimestamp'\n      operator: 'DoesNotExist'\n"

// withSelector adds "the pod is (not) a serving pod" to a stock pod stage.
func withSelector(stage, operator string) string {
	extra := fmt.Sprintf("    - key: '%s'\n      operator: '%s'\n", servingLabel, operator)
	return strings.Replace(stage, deletionExpression, deletionExpression+extra, 1)
}

// servingPodStart is the stock pod-ready stage for serving pods, except that
// they start Running but not Ready, as a kubelet starts a container with a
// readiness probe: the tests' pod replay probes the real server and marks the
// pod Ready only once it answers (tests/src/probe.rs), so clients and
// Deployments never see a server as ready before its model has loaded.
func servingPodStart(stock string) (string, error) {
	stage := withSelector(stock, "Exists")
	for _, swap := range [][2]string{
		{"name: pod-ready", "name: serving-pod-start"},
		{"status: \"True\"\n        type: Ready", "status: \"False\"\n        type: Ready"},
		{"status: \"True\"\n        type: ContainersReady", "status: \"False\"\n        type: ContainersReady"},
		{"name: {{ .name | Quote }}\n        ready: true", "name: {{ .name | Quote }}\n        ready: false"},
	} {
		if !strings.Contains(stage, swap[0]) {
			return "", fmt.Errorf("the stock pod-ready stage has no %q: kwok changed it", swap[0])
		}
		stage = strings.Replace(stage, swap[0], swap[1], 1)
	}
	return stage, nil
}

// runKwokStages prints kwok's stock "fast" Stage objects as one YAML stream,
// for kwok --config. Nodes become Ready at once and keep a heartbeat lease;
// Pods bound to a kwok node go Running and Ready at once and are removed
// when deleted. Pods owned by a Job stay Running unless --job-complete is
// given (then they succeed at once), so tests can drive Job outcomes by
// patching pod status themselves.
func runKwokStages(args []string) int {
	fs := flag.NewFlagSet("kwok-stages", flag.ContinueOnError)
	jobComplete := fs.Bool("job-complete", false, "also move Running pods owned by a Job to Succeeded")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	unprobed, err := servingPodStart(podfast.DefaultPodReady)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kwok-stages:", err)
		return 1
	}
	docs := []string{
		nodefast.DefaultNodeInit,
		nodeheartbeat.DefaultNodeHeartbeatWithLease,
		withSelector(podfast.DefaultPodReady, "DoesNotExist"),
		unprobed,
		podfast.DefaultPodDelete,
	}
	if *jobComplete {
		docs = append(docs, podfast.DefaultPodComplete)
	}
	for i, d := range docs {
		if i > 0 {
			fmt.Println("---")
		}
		fmt.Println(strings.TrimSpace(d))
	}
	return 0
}
