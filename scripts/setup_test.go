package scripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// machine is a fresh machine for scripts/setup: a copy of the files it
// reads, and a PATH of stand-ins that log each apt-get call.
type machine struct {
	root, bin string
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	m := &machine{root: t.TempDir(), bin: t.TempDir()}
	for _, f := range []string{"go.mod", "test/npm/package.json", "scripts/setup"} {
		data, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(m.root, f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(m.root, f), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range []string{"bash", "env", "sed", "cmp", "cp", "mkdir", "dirname", "cat", "chmod"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(m.bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	m.script(t, "go", "exit 0\n")
	m.script(t, "id", "echo 0\n")
	return m
}

// script puts a bash script called name on the machine's PATH.
func (m *machine) script(t *testing.T, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.bin, name), []byte("#!"+filepath.Join(m.bin, "bash")+"\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// node puts Node.js of version v (such as 18.20.4) on the PATH, with npm.
func (m *machine) node(t *testing.T, v string) {
	t.Helper()
	m.script(t, "node", `case "$1" in -p) echo `+strings.Split(v, ".")[0]+`;; *) echo v`+v+`;; esac`+"\n")
	m.script(t, "npm", `mkdir -p "$3/node_modules"`+"\n")
}

// apt offers nodejs at candidate; installing it puts that Node.js on the
// PATH, as NodeSource's package does (npm included).
func (m *machine) apt(t *testing.T, candidate string) {
	t.Helper()
	m.script(t, "apt-cache", "echo 'nodejs:'; echo '  Installed: (none)'; echo '  Candidate: "+candidate+"'\n")
	node := `printf '#!%s\ncase "$1" in -p) echo ` + strings.Split(candidate, ".")[0] + `;; *) echo v` + strings.Split(candidate, "-")[0] + `;; esac\n' "` + m.bin + `/bash" > "` + m.bin + `/node"
  printf '#!%s\nmkdir -p "$3/node_modules"\n' "` + m.bin + `/bash" > "` + m.bin + `/npm"
  chmod +x "` + m.bin + `/node" "` + m.bin + `/npm"`
	m.script(t, "apt-get", `echo "$*" >> "`+m.bin+`/apt.log"
case " $* " in *" install "*nodejs*)
  `+node+`;;
esac
`)
}

// run runs scripts/setup and returns its output, whether it succeeded and
// the apt-get calls it made.
func (m *machine) run(t *testing.T) (out string, ok bool, apt []string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(m.bin, "bash"), filepath.Join(m.root, "scripts/setup"))
	cmd.Env = []string{"PATH=" + m.bin, "HOME=" + t.TempDir(), "AMG_TOOLS_DIR=" + t.TempDir()}
	b, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatal(err)
	}
	if log, _ := os.ReadFile(filepath.Join(m.bin, "apt.log")); len(log) > 0 {
		apt = strings.Split(strings.TrimSuffix(string(log), "\n"), "\n")
	}
	return string(b), err == nil, apt
}

// setup installs Node.js with apt only when apt offers 20 or newer: on
// Debian 12, whose nodejs is 18, it stops before installing anything and
// says where Node.js 20 comes from.
func TestSetupInstallsNodeOnlyWhenAptOffersTwenty(t *testing.T) {
	for _, tc := range []struct {
		name, candidate string
		ok              bool
		apt             []string
		say             string
	}{
		{"Debian 12", "18.20.4+dfsg-1~deb12u3", false, []string{"update -qq"},
			"setup: apt offers nodejs 18.20.4+dfsg-1~deb12u3, too old to install. Node.js 20 or newer, with npm, is required: on Debian 12, whose nodejs is 18, add NodeSource's repository"},
		{"no nodejs package", "(none)", false, []string{"update -qq"}, "setup: apt offers nodejs (none), too old to install."},
		{"NodeSource", "20.20.2-1nodesource1", true, []string{"update -qq", "install -y -qq nodejs"}, "setup: installing test MCP servers"},
		{"with an epoch", "1:22.1.0-1", true, []string{"update -qq", "install -y -qq nodejs"}, "setup: installing test MCP servers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMachine(t)
			m.apt(t, tc.candidate)
			out, ok, apt := m.run(t)
			if ok != tc.ok || !slices.Equal(apt, tc.apt) || !strings.Contains(out, tc.say) {
				t.Errorf("setup succeeded %v, apt-get calls %q, output:\n%s\nwant success %v, apt-get calls %q, output saying %q", ok, apt, out, tc.ok, tc.apt, tc.say)
			}
		})
	}
}

// With Node.js 20 present, setup neither asks apt nor needs root; an
// older one it finds is refused, with where to get a newer one.
func TestSetupChecksTheNodeItFinds(t *testing.T) {
	for _, tc := range []struct {
		version string
		ok      bool
		say     string
	}{
		{"20.20.2", true, "setup: installing test MCP servers"},
		{"18.20.4", false, "setup: found Node.js v18.20.4. Node.js 20 or newer, with npm, is required"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			m := newMachine(t)
			m.apt(t, "20.20.2-1nodesource1")
			m.node(t, tc.version)
			m.script(t, "id", "echo 1000\n")
			out, ok, apt := m.run(t)
			if ok != tc.ok || len(apt) != 0 || !strings.Contains(out, tc.say) {
				t.Errorf("setup succeeded %v, apt-get calls %q, output:\n%s\nwant success %v, no apt-get call, output saying %q", ok, apt, out, tc.ok, tc.say)
			}
		})
	}
}

// Without Node.js and without root, setup says what it needs.
func TestSetupWithoutNodeNorRoot(t *testing.T) {
	m := newMachine(t)
	m.apt(t, "20.20.2-1nodesource1")
	m.script(t, "id", "echo 1000\n")
	out, ok, apt := m.run(t)
	if want := "setup: Node.js 20 or newer, with npm, is required"; ok || len(apt) != 0 || !strings.Contains(out, want) {
		t.Errorf("setup succeeded %v, apt-get calls %q, output:\n%s\nwant a failure saying %q, no apt-get call", ok, apt, out, want)
	}
}
