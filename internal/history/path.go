package history

import (
	"os"
	"path/filepath"
	"strings"
)

// FileName is the history file's name in the directories DefaultPath
// picks.
const FileName = "history.db"

// Env is what DefaultPath reads of the process: the environment and the
// effective user. os.Getenv and os.Geteuid in the daemon; tests fix it.
type Env struct {
	Getenv func(string) string
	Euid   int
}

// ProcessEnv is the running process's Env.
func ProcessEnv() Env { return Env{Getenv: os.Getenv, Euid: os.Geteuid()} }

// DefaultPath is where the history lives when the policy names no
// history.path, chosen so that history on by default works wherever
// fqdngate runs, root or not:
//
//   - $STATE_DIRECTORY/history.db when systemd gives a state directory
//     (StateDirectory=fqdngate in the shipped unit);
//   - as root, beside firewall.state_file (default /var/lib/fqdngate);
//   - otherwise (the quick start's unprivileged run)
//     $XDG_STATE_HOME/fqdngate/history.db, by default
//     ~/.local/state/fqdngate/history.db.
//
// It returns "" when none can be named (no home directory): the daemon
// then runs without history and says so.
func DefaultPath(env Env, stateFile string) string {
	if dir := env.Getenv("STATE_DIRECTORY"); dir != "" {
		// systemd lists several directories separated by colons.
		dir, _, _ = strings.Cut(dir, ":")
		return filepath.Join(dir, FileName)
	}
	if env.Euid == 0 {
		dir := "/var/lib/fqdngate"
		if stateFile != "" {
			dir = filepath.Dir(stateFile)
		}
		return filepath.Join(dir, FileName)
	}
	if dir := env.Getenv("XDG_STATE_HOME"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "fqdngate", FileName)
	}
	if home := env.Getenv("HOME"); filepath.IsAbs(home) {
		return filepath.Join(home, ".local", "state", "fqdngate", FileName)
	}
	return ""
}
