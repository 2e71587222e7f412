package audit

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// appendJSON appends rec as one JSON object, as json.Marshal would write it
// (same keys, order, omissions and string escaping) when Args is compact,
// without reflection: the writer encodes every record, and on a 2-core
// machine its cost is taken from the requests being decided. Args is
// appended as it is; Logger.sanitize has checked it is JSON, and the
// redactor never puts a line break in it.
func (rec *Record) appendJSON(b []byte) []byte {
	b = append(b, `{"ts":"`...)
	b = rec.Time.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","decision_id":`...)
	b = appendJSONString(b, rec.DecisionID)
	b = appendOptString(b, `,"agent":`, rec.Agent)
	b = appendOptString(b, `,"role":`, rec.Role)
	b = appendOptString(b, `,"token_id":`, rec.TokenID)
	b = appendOptString(b, `,"server":`, rec.Server)
	b = appendOptString(b, `,"tool":`, rec.Tool)
	b = appendOptString(b, `,"method":`, rec.Method)
	if len(rec.Args) > 0 {
		b = append(b, `,"args":`...)
		b = append(b, rec.Args...)
	}
	if rec.ArgsCut != 0 {
		b = append(b, `,"args_cut":`...)
		b = strconv.AppendInt(b, int64(rec.ArgsCut), 10)
	}
	b = appendOptString(b, `,"policy_version":`, rec.PolicyVersion)
	b = append(b, `,"verdict":`...)
	b = appendJSONString(b, rec.Verdict)
	b = appendOptString(b, `,"shadow_verdict":`, rec.ShadowVerdict)
	b = appendOptString(b, `,"rule":`, rec.Rule)
	b = append(b, `,"code":`...)
	b = appendJSONString(b, rec.Code)
	b = appendOptString(b, `,"reason":`, rec.Reason)
	b = append(b, `,"latency_us":`...)
	b = strconv.AppendInt(b, rec.LatencyMicros, 10)
	b = appendOptString(b, `,"upstream_status":`, rec.UpstreamStatus)
	if rec.UpstreamMicros != 0 {
		b = append(b, `,"upstream_latency_us":`...)
		b = strconv.AppendInt(b, rec.UpstreamMicros, 10)
	}
	b = appendOptString(b, `,"trace_id":`, rec.TraceID)
	b = appendOptString(b, `,"approval_id":`, rec.ApprovalID)
	if rec.Seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, rec.Seq, 10)
	}
	b = appendOptString(b, `,"prev":`, rec.Prev)
	b = appendOptString(b, `,"hash":`, rec.Hash)
	return append(b, '}')
}

func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendJSONString(append(b, key...), s)
}

const hexDigits = "0123456789abcdef"

// appendEscapedByte appends the escape of c, an ASCII byte that a JSON
// string may not hold as it is (or that encoding/json escapes anyway): the
// two-character escape where JSON has one, \u00XX otherwise.
func appendEscapedByte(b []byte, c byte) []byte {
	switch c {
	case '"', '\\':
		return append(b, '\\', c)
	case '\b':
		return append(b, '\\', 'b')
	case '\f':
		return append(b, '\\', 'f')
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	return append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
}

// appendJSONString quotes s exactly as encoding/json does: HTML-sensitive
// characters, U+2028 and U+2029 escaped, invalid UTF-8 replaced by U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = appendEscapedByte(append(b, s[start:i]...), c)
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
