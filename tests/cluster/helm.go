package main

import (
	"errors"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	helmcmd "helm.sh/helm/v4/pkg/cmd"
	"helm.sh/helm/v4/pkg/kube"
)

func runHelm(args []string) int {
	// Hide the global flags that Kubernetes packages in this binary register.
	pflag.CommandLine = pflag.NewFlagSet("helm", pflag.ExitOnError)
	// Keep the field manager "helm" whatever the binary is called.
	kube.ManagedFieldsManager = "helm"
	cmd, err := helmcmd.NewRootCmd(os.Stdout, args, helmcmd.SetupLogging)
	if err != nil {
		slog.Warn("command failed", slog.Any("error", err))
		return 1
	}
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		var cerr helmcmd.CommandError
		if errors.As(err, &cerr) {
			return cerr.ExitCode
		}
		return 1
	}
	return 0
}
