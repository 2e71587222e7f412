package console

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A console whose admin token is empty lets no session in, however it got
// that way: the key an empty token derives is anyone's to compute.
func TestNoSessionWithoutAnAdminToken(t *testing.T) {
	c, err := New(Deps{Token: "amgadm_test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.d.Token, c.key = "", sessionKey("")
	forged := c.cookie(&session{Name: "mallory", Expires: time.Now().Add(time.Hour).Unix(), Nonce: "00"})
	req := httptest.NewRequest(http.MethodGet, "/console/tokens", nil)
	req.AddCookie(&http.Cookie{Name: cookieName, Value: forged})
	if s := c.session(req); s != nil {
		t.Errorf("a cookie signed with the empty token's key is the session of %q", s.Name)
	}
}

// A session names who decides, so its name follows the rule a decision's
// does, even in a cookie signed before the rule was as strict.
func TestNoSessionForANameThatIsNotText(t *testing.T) {
	c, err := New(Deps{Token: "amgadm_test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alice\u009b2J", "\x1b[2Jalice", " alice", "", "amg_0123456789abcdef"} {
		ck := c.cookie(&session{Name: name, Expires: time.Now().Add(time.Hour).Unix(), Nonce: "00"})
		req := httptest.NewRequest(http.MethodGet, "/console/tokens", nil)
		req.AddCookie(&http.Cookie{Name: cookieName, Value: ck})
		if s := c.session(req); s != nil {
			t.Errorf("a session named %q was accepted", name)
		}
	}
}
