// Package policy compiles a CallPolicy (spec plus the number lists it names)
// into an immutable Policy and decides incoming Graph calls with it. The
// operator, the receiver and the kubectl plugin all use it, so a policy means
// the same everywhere. It knows nothing of HTTP or Kubernetes clients.
//
// Semantics are the API's (docs/api.md, and docs/matching.md for how calls
// are matched). Where those are silent, this package decides as follows:
//
//   - Every given match field must hold and inside a field any item may.
//     As docs/matching.md says, numbers, numberPrefixes, numberPatterns and
//     numberLists are one condition, "the caller's number is one of these",
//     which holds when any of the given ones holds, and is ANDed with the
//     other fields. An empty list counts as not given; a numberLists whose
//     lists are all empty still makes the rule need a phone caller with a
//     valid number.
//   - Number fields hold only for phone callers whose number normalizes.
//     Entries (numbers, prefixes, list lines) have at most 18 digits. A
//     numberPrefixes entry may end in '*', as list prefixes do. List lines
//     may carry a '#' comment after the entry.
//   - ids and tenantIds compare ignoring ASCII case: they are GUIDs, which
//     Graph sends in upper or lower case. ids hold when the user, guest,
//     applicationInstance or application member of the caller's identity set
//     has one of them, whatever the caller's type.
//   - The caller's displayName and tenantId are those of the identity that
//     gave the caller its type, else of the first other member that has one.
//   - The identity-set members that make a caller "unknown" are device and
//     assertedIdentity (the members Graph documents beyond the typed ones),
//     whose id and displayName then are the caller's, and any other object
//     member of the set (a kind Graph may add), which gives no id.
//   - Requested modalities compare ignoring case; the policy's must be
//     spelled as in the CRD enum.
//   - Schedules are evaluated on the zone's wall clock, so the hour skipped
//     by a spring-forward never occurs and the hour repeated by a fall-back
//     holds twice. "Local" is refused as a time zone.
//   - CEL: `call` always has id, state (state, else callState), direction,
//     subject, callbackUri, callChainId, correlationId, tenantId and
//     myParticipantId (strings, "" when Graph left them out), targets and
//     requestedModalities (lists) and source (a map), so expressions can
//     compare them without has(). The strings extension library is
//     available. An expression may be of type bool or dyn; one evaluation
//     may cost at most 100,000 units (cel-go's runtime cost), and exceeding
//     it, like any evaluation error or a non-bool result, counts as no match.
//   - callers.repeat and blockFor need a state store: DecideIn has none, so
//     there no repeat condition holds and no caller is blocked (a caller's
//     first call); Prepare and Resolve decide with the store. The caller's
//     key is its normalized number (a phone id that does not normalize:
//     the id, trimmed), else its identity's id lower-cased; anonymous and
//     encrypted callers, and unknown ones without an id, have none.
//   - A list entry's expires= counts whole seconds (a fraction is dropped);
//     of duplicate entries the one that expires last, or never, counts.
//   - Announce prompts from ConfigMaps are binaryData only, checked with
//     wav.Check, at most 64 MiB together in one policy; a prompt longer
//     than its maxSeconds is a warning.
//   - Compile applies the CRD's defaults (v1alpha1's Default* constants,
//     which the CRD's markers repeat) and repeats its validations, at the
//     same field paths and, for its CEL rules, with the same messages, so
//     that YAML that never went through an API server behaves the same.
//     controllers' TestInvalidSpecsRefusedByAdmissionAndCompiler runs one
//     table of invalid specs against both; v1alpha1's
//     TestCRDDefaultsAreTheConstants and controllers'
//     TestAdmissionDefaultsAreTheCompilers check the defaults. LoadYAML rejects unknown fields and values of the
//     wrong kind (e.g. an unquoted +1425... is a number, not a string), as
//     kubectl's strict validation does.
package policy
