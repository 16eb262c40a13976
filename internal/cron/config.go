package cron

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	robfig "github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v4"
)

// Job is one scheduled job of the config file.
type Job struct {
	// Name identifies the job in logs and metrics: 1-64 characters of [A-Za-z0-9._-].
	Name string `yaml:"name"`
	// Schedule is a standard 5-field cron expression (minute hour day-of-month month
	// day-of-week, in UTC) or a descriptor (@hourly, @daily, @every 15m).
	Schedule string `yaml:"schedule"`
	// Command is the adpulse subcommand: import, export or reconcile.
	Command string `yaml:"command"`
	// Args are its flags, as on the command line. Placeholders are replaced by times derived
	// from the scheduled time of the run (UTC, RFC 3339): ${RUN_TIME}, ${HOUR_START},
	// ${PREV_HOUR_START}, ${DAY_START}, ${PREV_DAY_START}, and ${RUN_DATE}
	// (YYYY-MM-DD of the run, for file names).
	Args []string `yaml:"args"`
	// Timeout bounds one run (default 1h); the job is killed when it passes.
	Timeout time.Duration `yaml:"timeout"`

	schedule robfig.Schedule
}

// Config is the cron role's file (--cron-config).
type Config struct {
	Jobs []Job `yaml:"jobs"`
}

// Commands a job may run.
var Commands = []string{"import", "export", "reconcile"}

// MaxJobs bounds the file.
const MaxJobs = 1000

var jobName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

var parser = robfig.NewParser(robfig.Minute | robfig.Hour | robfig.Dom | robfig.Month | robfig.Dow | robfig.Descriptor)

// LoadConfig reads and checks a config file; errors name the job and the field.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("%s: larger than 1 MiB", path)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses the YAML of a config file.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	if len(c.Jobs) == 0 {
		return nil, errors.New("jobs: no job")
	}
	if len(c.Jobs) > MaxJobs {
		return nil, fmt.Errorf("jobs: more than %d", MaxJobs)
	}
	seen := map[string]bool{}
	for i := range c.Jobs {
		j := &c.Jobs[i]
		if !jobName.MatchString(j.Name) {
			return nil, fmt.Errorf("jobs[%d].name %q: want 1-64 characters of [A-Za-z0-9._-]", i, j.Name)
		}
		if seen[j.Name] {
			return nil, fmt.Errorf("jobs[%d].name %q: given twice", i, j.Name)
		}
		seen[j.Name] = true
		s, err := parser.Parse(j.Schedule)
		if err != nil {
			return nil, fmt.Errorf("job %s: schedule %q: %w", j.Name, j.Schedule, err)
		}
		j.schedule = s
		ok := false
		for _, c := range Commands {
			ok = ok || j.Command == c
		}
		if !ok {
			return nil, fmt.Errorf("job %s: command %q: want import, export or reconcile", j.Name, j.Command)
		}
		if j.Timeout == 0 {
			j.Timeout = time.Hour
		}
		if j.Timeout < time.Second || j.Timeout > 7*24*time.Hour {
			return nil, fmt.Errorf("job %s: timeout must be 1s to 168h", j.Name)
		}
		for _, a := range j.Args {
			if strings.Contains(a, "${") && !validPlaceholders(a) {
				return nil, fmt.Errorf("job %s: argument %q: unknown placeholder (want RUN_TIME, RUN_DATE, HOUR_START, PREV_HOUR_START, DAY_START or PREV_DAY_START)", j.Name, a)
			}
		}
	}
	return &c, nil
}

var placeholder = regexp.MustCompile(`\$\{([A-Z_]*)\}`)

func validPlaceholders(a string) bool {
	for _, m := range placeholder.FindAllStringSubmatch(a, -1) {
		if _, ok := placeholders(time.Unix(0, 0))[m[1]]; !ok {
			return false
		}
	}
	return !strings.Contains(placeholder.ReplaceAllString(a, ""), "${")
}

func placeholders(run time.Time) map[string]string {
	run = run.UTC()
	hour := run.Truncate(time.Hour)
	day := run.Truncate(24 * time.Hour)
	return map[string]string{
		"RUN_TIME":        run.Format(time.RFC3339),
		"RUN_DATE":        run.Format(time.DateOnly),
		"HOUR_START":      hour.Format(time.RFC3339),
		"PREV_HOUR_START": hour.Add(-time.Hour).Format(time.RFC3339),
		"DAY_START":       day.Format(time.RFC3339),
		"PREV_DAY_START":  day.AddDate(0, 0, -1).Format(time.RFC3339),
	}
}

// Expand returns the job's arguments with the placeholders of a run scheduled at run.
func (j *Job) Expand(run time.Time) []string {
	p := placeholders(run)
	out := make([]string, len(j.Args))
	for i, a := range j.Args {
		out[i] = placeholder.ReplaceAllStringFunc(a, func(m string) string { return p[m[2:len(m)-1]] })
	}
	return out
}

// Next is the job's first scheduled time after t.
func (j *Job) Next(t time.Time) time.Time { return j.schedule.Next(t.UTC()) }
