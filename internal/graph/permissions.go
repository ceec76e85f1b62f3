package graph

import (
	"slices"
	"strings"
)

// The application permissions (app roles of Microsoft Graph) of the calling
// API, as an app-only access token carries them in its roles claim.
const (
	PermissionCallsAccessMedia          = "Calls.AccessMedia.All"
	PermissionCallsInitiate             = "Calls.Initiate.All"
	PermissionCallsInitiateGroupCall    = "Calls.InitiateGroupCall.All"
	PermissionCallsJoinGroupCall        = "Calls.JoinGroupCall.All"
	PermissionCallsJoinGroupCallAsGuest = "Calls.JoinGroupCallAsGuest.All"
)

// docsBase is where Microsoft Learn keeps Graph's API pages.
const docsBase = "https://learn.microsoft.com/en-us/graph/api/"

// CallingPermissions are every application permission of the calling API.
var CallingPermissions = []string{
	PermissionCallsAccessMedia,
	PermissionCallsInitiate,
	PermissionCallsInitiateGroupCall,
	PermissionCallsJoinGroupCall,
	PermissionCallsJoinGroupCallAsGuest,
}

// CallAction is an action a bot takes on a call through Graph.
type CallAction string

// The call actions a CallPolicy can take, now or with actions to come
// (announcing a message is answer, playPrompt and hang up).
const (
	CallAnswer     CallAction = "answer"
	CallReject     CallAction = "reject"
	CallRedirect   CallAction = "redirect"
	CallPlayPrompt CallAction = "playPrompt"
	// CallHangUp is DELETE /communications/calls/{id}.
	CallHangUp CallAction = "hangUp"
)

// PermissionRequirement is what Microsoft documents as needed for one thing a
// bot does: any one of AnyOf, least privileged first; none when AnyOf is
// empty.
type PermissionRequirement struct {
	// For names the action, or what the permission gives.
	For   string
	AnyOf []string
	// Doc is Microsoft's page whose permissions table this repeats.
	Doc string
}

// actionPermissions is the one table of the permissions each call action
// needs, from the Permissions section of each action's page on Microsoft
// Learn (see Doc). The operator's GraphAccess check and the emulator's 403s
// both read it.
var actionPermissions = map[CallAction]PermissionRequirement{
	// "Application: Not supported." (formerly "None"): rejecting a call
	// offered to the bot needs no application permission.
	CallReject: {For: string(CallReject), Doc: docsBase + "call-reject"},
	// Least privileged Calls.Initiate.All, no higher one.
	CallRedirect: {For: string(CallRedirect), AnyOf: []string{PermissionCallsInitiate}, Doc: docsBase + "call-redirect"},
	// https://learn.microsoft.com/en-us/graph/api/call-answer: least
	// privileged Calls.JoinGroupCall.All, higher
	// Calls.JoinGroupCallAsGuest.All, as the table lists them (app-hosted
	// media would also need Calls.AccessMedia.All; callguard answers with
	// service-hosted media).
	CallAnswer: {For: string(CallAnswer), AnyOf: []string{PermissionCallsJoinGroupCall, PermissionCallsJoinGroupCallAsGuest}, Doc: docsBase + "call-answer"},
	// https://learn.microsoft.com/en-us/graph/api/call-playprompt: least
	// privileged Calls.Initiate.All, higher Calls.AccessMedia.All (only
	// needed with app-hosted media). Microsoft notes that Graph checks
	// them when the call is created rather than on this request; the
	// operator's check and the emulator require them all the same.
	CallPlayPrompt: {For: string(CallPlayPrompt), AnyOf: []string{PermissionCallsInitiate, PermissionCallsAccessMedia}, Doc: docsBase + "call-playprompt"},
	// https://learn.microsoft.com/en-us/graph/api/call-delete (DELETE
	// /communications/calls/{id}): Calls.Initiate.All, then
	// Calls.AccessMedia.All, with the same note as playPrompt.
	CallHangUp: {For: "hang up", AnyOf: []string{PermissionCallsInitiate, PermissionCallsAccessMedia}, Doc: docsBase + "call-delete"},
}

// callerIdentityPermissions are those of which an app needs one for the
// source of an incoming call notification to arrive decrypted (the note
// under the permissions table of call: answer); without any, Graph sends the
// caller as an encrypted identity that no rule on numbers or users matches.
var callerIdentityPermissions = PermissionRequirement{
	For: "caller identities to arrive unencrypted",
	AnyOf: []string{PermissionCallsAccessMedia, PermissionCallsInitiate, PermissionCallsInitiateGroupCall,
		PermissionCallsJoinGroupCall, PermissionCallsJoinGroupCallAsGuest},
	Doc: docsBase + "call-answer",
}

// ActionPermissions returns what Microsoft documents as needed for action;
// ok is false for an action the table does not know.
func ActionPermissions(action CallAction) (req PermissionRequirement, ok bool) {
	req, ok = actionPermissions[action]
	req.AnyOf = slices.Clone(req.AnyOf)
	return req, ok
}

// CallerIdentityPermissions returns the permissions of which one decrypts
// callers' identities.
func CallerIdentityPermissions() PermissionRequirement {
	req := callerIdentityPermissions
	req.AnyOf = slices.Clone(req.AnyOf)
	return req
}

// SatisfiedBy reports whether roles hold one of the permissions required (or
// none is).
func (r PermissionRequirement) SatisfiedBy(roles []string) bool {
	if len(r.AnyOf) == 0 {
		return true
	}
	return slices.ContainsFunc(r.AnyOf, func(p string) bool { return HasRole(roles, p) })
}

// Describe names the permissions of an unmet requirement: "Calls.Initiate.All
// (for redirect)", or "A or B (for answer)".
func (r PermissionRequirement) Describe() string {
	return strings.Join(r.AnyOf, " or ") + " (for " + r.For + ")"
}

// HasRole reports whether roles hold the application permission perm. Entra
// spells app role values as the API defines them; the comparison ignores
// case all the same.
func HasRole(roles []string, perm string) bool {
	return slices.ContainsFunc(roles, func(r string) bool { return strings.EqualFold(r, perm) })
}

// MissingPermissions returns the requirements that roles do not meet: the
// caller identities' first, then each action's in the order given (actions
// needing the same permissions are reported once each).
func MissingPermissions(roles []string, actions []CallAction) []PermissionRequirement {
	var missing []PermissionRequirement
	if !callerIdentityPermissions.SatisfiedBy(roles) {
		missing = append(missing, CallerIdentityPermissions())
	}
	for _, a := range actions {
		req, ok := ActionPermissions(a)
		if ok && !req.SatisfiedBy(roles) {
			missing = append(missing, req)
		}
	}
	return missing
}
