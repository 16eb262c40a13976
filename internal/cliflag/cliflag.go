// Package cliflag is adpulse's one convention for command-line flags: every flag can also be
// given as an ADPULSE_* environment variable (--click-secret is ADPULSE_CLICK_SECRET), and a
// flag on the command line wins over the environment. The environment is passed in, so
// nothing here reads it behind the caller's back.
package cliflag

import (
	"flag"
	"fmt"
	"strings"
)

// EnvName is the environment variable of a flag: ADPULSE_ and the name upper-cased, with
// dashes as underscores.
func EnvName(flagName string) string {
	return "ADPULSE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// DescribeEnv appends its environment variable to every flag's usage text, so -h lists both
// ways to set it. Calling it twice adds nothing more.
func DescribeEnv(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		env := EnvName(f.Name)
		if !strings.Contains(f.Usage, env) {
			f.Usage += " [env " + env + "]"
		}
	})
}

// Parse parses args into fs, then sets every flag not given on the command line from its
// environment variable, as lookupEnv (usually os.LookupEnv) finds it. Positional arguments
// are an error.
func Parse(fs *flag.FlagSet, args []string, lookupEnv func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		env := EnvName(f.Name)
		if v, ok := lookupEnv(env); ok && !set[f.Name] && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w%s", env, v, e, expectedForm(f))
			}
		}
	})
	return err
}

// expectedForm names what a flag's value must look like, for error messages: the type that
// flag.PrintDefaults shows (" (want a duration such as 30s)").
func expectedForm(f *flag.Flag) string {
	switch typ, _ := flag.UnquoteUsage(f); typ {
	case "duration":
		return " (want a duration such as 500ms, 30s or 5m)"
	case "int", "uint":
		return " (want a whole number)"
	case "float":
		return " (want a number)"
	case "":
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			return " (want true or false)"
		}
	}
	return ""
}
