package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/callguard/callguard/api/v1alpha1"
	"github.com/callguard/callguard/internal/wav"
)

// maxPromptsBytes bounds the ConfigMap prompts of one policy together: each
// is at most wav.MaxSize (2 MiB), and every receiver keeps them all in
// memory.
const maxPromptsBytes = 32 * wav.MaxSize

// Prompt returns the bytes of the policy's ConfigMap prompt whose sha256 is
// sha256hex (lower-case hex, as Announcement.PromptSHA256): what receivers
// serve to Graph. URL prompts are not the policy's to serve.
func (p *Policy) Prompt(sha256hex string) ([]byte, bool) {
	b, ok := p.prompts[sha256hex]
	return b, ok
}

// announce compiles an Announce rule's announce, checking a ConfigMap
// prompt with wav.Check.
func (c *compiler) announce(path string, a *v1alpha1.AnnounceSpec) *Announcement {
	out := &Announcement{MaxSeconds: a.MaxSeconds}
	if a.MaxSeconds < 5 || a.MaxSeconds > 120 {
		c.errorf(path+".maxSeconds", "must be 5 to 120, got %d", a.MaxSeconds)
	}
	pp := path + ".prompt"
	ps := a.Prompt
	switch {
	case (ps.ConfigMapKeyRef != nil) == (ps.URL != ""):
		c.errorf(pp, "exactly one of configMapKeyRef or url must be set")
	case ps.URL != "":
		c.publicURL(pp+".url", ps.URL)
		out.PromptURL = ps.URL
	default:
		info, sum, ok := c.prompt(pp+".configMapKeyRef", *ps.ConfigMapKeyRef)
		if !ok {
			break
		}
		out.PromptSHA256 = sum
		if limit := time.Duration(a.MaxSeconds) * time.Second; info.Duration > limit {
			c.warnf(pp+".configMapKeyRef", "the prompt plays for %s, longer than maxSeconds (%d): the call is hung up before it ends",
				info.Duration.Round(100*time.Millisecond), a.MaxSeconds)
		}
	}
	return out
}

// prompt checks the ConfigMap prompt a reference names and keeps its bytes,
// once however many rules name it.
func (c *compiler) prompt(path string, ref v1alpha1.ConfigMapKeyReference) (info wav.Info, sum string, ok bool) {
	c.length(path+".name", ref.Name, 1, 253)
	c.length(path+".key", ref.Key, 1, 253)
	lr := ListRef{Name: ref.Name, Key: ref.Key}
	if seen, ok := c.promptsSeen[lr]; ok {
		return seen.info, seen.sum, seen.ok
	}
	if c.promptsSeen == nil {
		c.promptsSeen = map[ListRef]checkedPrompt{}
	}
	info, sum, ok = c.checkPrompt(path, lr)
	c.promptsSeen[lr] = checkedPrompt{info, sum, ok}
	return info, sum, ok
}

// checkedPrompt is what prompt found for a reference: its problems are
// reported at the first path that names it.
type checkedPrompt struct {
	info wav.Info
	sum  string
	ok   bool
}

func (c *compiler) checkPrompt(path string, ref ListRef) (info wav.Info, sum string, ok bool) {
	b, found := c.src.Prompts[ref]
	if !found {
		c.errorf(path, "configmap %s key %s: not found (a prompt is a binaryData key holding a WAV file)", ref.Name, ref.Key)
		return wav.Info{}, "", false
	}
	info, err := wav.Check(b)
	if err != nil {
		c.errorf(path, "configmap %s key %s: %v", ref.Name, ref.Key, err)
		return wav.Info{}, "", false
	}
	h := sha256.Sum256(b)
	sum = hex.EncodeToString(h[:])
	if _, dup := c.prompts[sum]; dup {
		// The same bytes under another key.
		return info, sum, true
	}
	if c.promptBytes += len(b); c.promptBytes > maxPromptsBytes {
		c.errorf(path, "configmap %s key %s: the policy's prompts total more than %d MiB", ref.Name, ref.Key, maxPromptsBytes>>20)
		return wav.Info{}, "", false
	}
	if c.prompts == nil {
		c.prompts = map[string][]byte{}
	}
	c.prompts[sum] = b
	return info, sum, true
}
