package history

import "testing"

func TestDefaultPath(t *testing.T) {
	for _, tt := range []struct {
		name      string
		env       map[string]string
		euid      int
		stateFile string
		want      string
	}{
		{"systemd state directory first", map[string]string{"STATE_DIRECTORY": "/var/lib/fqdngate:/var/lib/other", "HOME": "/root"}, 0, "/srv/state.json", "/var/lib/fqdngate/history.db"},
		{"root: beside the state file", map[string]string{"HOME": "/root"}, 0, "/srv/fq/state.json", "/srv/fq/history.db"},
		{"root without a state file", nil, 0, "", "/var/lib/fqdngate/history.db"},
		{"user: XDG state home", map[string]string{"XDG_STATE_HOME": "/home/u/.state", "HOME": "/home/u"}, 1000, "/var/lib/fqdngate/state.json", "/home/u/.state/fqdngate/history.db"},
		{"user: relative XDG_STATE_HOME is ignored", map[string]string{"XDG_STATE_HOME": "rel", "HOME": "/home/u"}, 1000, "", "/home/u/.local/state/fqdngate/history.db"},
		{"user without home", nil, 1000, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := Env{Getenv: func(k string) string { return tt.env[k] }, Euid: tt.euid}
			if got := DefaultPath(env, tt.stateFile); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
