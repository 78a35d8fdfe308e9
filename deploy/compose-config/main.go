// plg-compose-config loads a Compose file with compose-go — the loader Docker Compose itself uses — and
// prints the resolved project as JSON (interpolated, merged, validated against the Compose schema), like
// `docker compose config --format json` without a Docker engine. The test suite builds it once into
// .plg/bin (services/devstack/gotools.py) and compares the result with services/devstack/apps.py.
//
//	plg-compose-config docker-compose.yml > project.json
//
// Exit status 1 with the loader's message on stderr when the file does not load (schema error, a
// required variable ${X:?...} unset, a bad interpolation).
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: plg-compose-config COMPOSE_FILE...")
		os.Exit(2)
	}
	// Only the process environment: no .env file is read, so a test decides every variable.
	options, err := cli.NewProjectOptions(os.Args[1:], cli.WithOsEnv, cli.WithConsistency(true))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
	os.Stdout.Write([]byte("\n"))
}
