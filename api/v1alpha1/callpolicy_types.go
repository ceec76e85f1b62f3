/*
Copyright 2026 The callguard Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Mode says whether decisions are carried out on Graph.
// +kubebuilder:validation:Enum=Enforce;DryRun
type Mode string

const (
	// ModeEnforce carries decisions out on Graph.
	ModeEnforce Mode = "Enforce"
	// ModeDryRun decides, logs and counts, but calls nothing on Graph.
	ModeDryRun Mode = "DryRun"
)

// Action is what happens to a call.
// +kubebuilder:validation:Enum=Allow;Reject;Redirect;Announce
type Action string

const (
	// ActionAllow leaves the call alone (or forwards it upstream).
	ActionAllow Action = "Allow"
	// ActionReject rejects the call with a reason.
	ActionReject Action = "Reject"
	// ActionRedirect redirects the call to other targets.
	ActionRedirect Action = "Redirect"
	// ActionAnnounce answers the call, plays a recorded announcement and
	// hangs up (rules only).
	ActionAnnounce Action = "Announce"
)

// StateOnError is what a rule's repeat or temporary-block part does when
// the state store cannot answer in time.
// +kubebuilder:validation:Enum=Ignore;Match
type StateOnError string

const (
	// StateOnErrorIgnore: the repeat/temporary-block part does not hold (fail open).
	StateOnErrorIgnore StateOnError = "Ignore"
	// StateOnErrorMatch: the repeat part holds (fail closed).
	StateOnErrorMatch StateOnError = "Match"
)

// RejectReason is Graph's rejectReason.
// +kubebuilder:validation:Enum=none;busy;forbidden
type RejectReason string

const (
	ReasonNone      RejectReason = "none"
	ReasonBusy      RejectReason = "busy"
	ReasonForbidden RejectReason = "forbidden"
)

// IdentityType is the kind of identity a caller presents: the first present
// member of phone, user, guest, applicationInstance, application, acsUser,
// onPremises and encrypted in call.source.identity. No identity, or a phone
// with an empty or "anonymous" id, is anonymous; members only of other kinds
// (e.g. device) are unknown, so a "no anonymous callers" rule does not catch
// callers it cannot name.
// +kubebuilder:validation:Enum=phone;user;guest;application;applicationInstance;acsUser;onPremises;encrypted;anonymous;unknown
type IdentityType string

const (
	IdentityPhone               IdentityType = "phone"
	IdentityUser                IdentityType = "user"
	IdentityGuest               IdentityType = "guest"
	IdentityApplication         IdentityType = "application"
	IdentityApplicationInstance IdentityType = "applicationInstance"
	IdentityACSUser             IdentityType = "acsUser"
	// IdentityOnPremises is a Skype for Business Server (on-premises) user.
	IdentityOnPremises IdentityType = "onPremises"
	IdentityEncrypted  IdentityType = "encrypted"
	IdentityAnonymous  IdentityType = "anonymous"
	IdentityUnknown    IdentityType = "unknown"
)

// Modality is a Graph call modality.
// +kubebuilder:validation:Enum=audio;video;videoBasedScreenSharing;data
type Modality string

// Weekday names the day a schedule window starts.
// +kubebuilder:validation:Enum=Mon;Tue;Wed;Thu;Fri;Sat;Sun
type Weekday string

// APIVersion is the Graph API version the receiver calls.
// +kubebuilder:validation:Enum=v1.0;beta
type APIVersion string

// CallPolicySpec declares how a calling bot treats incoming calls.
// +kubebuilder:validation:XValidation:rule="self.defaultAction != 'Redirect' || has(self.defaultRedirect)",message="defaultRedirect is required when defaultAction is Redirect",fieldPath=".defaultRedirect"
// +kubebuilder:validation:XValidation:rule="!has(self.defaultRedirect) || self.defaultAction == 'Redirect'",message="defaultRedirect is only allowed when defaultAction is Redirect",fieldPath=".defaultRedirect"
// +kubebuilder:validation:XValidation:rule="!has(self.defaultReason) || self.defaultReason == 'none' || self.defaultAction == 'Reject'",message="defaultReason is only allowed when defaultAction is Reject",fieldPath=".defaultReason"
// +kubebuilder:validation:XValidation:rule="!has(self.defaultAction) || self.defaultAction != 'Announce'",message="defaultAction must be Allow, Reject or Redirect: Announce is for rules",fieldPath=".defaultAction"
type CallPolicySpec struct {
	// Bot identifies the calling bot and how it authenticates to Graph.
	Bot BotSpec `json:"bot"`

	// Graph says where Graph, the token authority and the inbound-token keys are.
	// +kubebuilder:default={}
	// +optional
	Graph GraphSpec `json:"graph,omitempty"`

	// Upstream is an existing bot's callback that receives the notifications of allowed calls.
	// +optional
	Upstream *UpstreamSpec `json:"upstream,omitempty"`

	// State is where repeat-call counts and temporary blocks live. Without
	// state.redis each receiver counts only the calls it receives itself.
	// +optional
	State *StateSpec `json:"state,omitempty"`

	// Mode is Enforce or DryRun.
	// +kubebuilder:default=Enforce
	// +optional
	Mode Mode `json:"mode,omitempty"`

	// DefaultAction applies when no rule matches.
	// +kubebuilder:default=Allow
	// +optional
	DefaultAction Action `json:"defaultAction,omitempty"`

	// DefaultReason is the reject reason when DefaultAction is Reject (default none).
	// +optional
	DefaultReason RejectReason `json:"defaultReason,omitempty"`

	// DefaultRedirect is required when DefaultAction is Redirect.
	// +optional
	DefaultRedirect *RedirectSpec `json:"defaultRedirect,omitempty"`

	// Rules are ordered: the first rule whose match holds decides.
	// +kubebuilder:validation:MaxItems=512
	// +kubebuilder:validation:XValidation:rule="self.all(r, self.exists_one(s, s.name == r.name))",message="rule names must be unique"
	// +optional
	Rules []Rule `json:"rules,omitempty"`

	// Receiver configures the receiver Deployment.
	// +kubebuilder:default={}
	// +optional
	Receiver ReceiverSpec `json:"receiver,omitempty"`
}

// AnyTenant, as the only entry of bot.additionalTenants, accepts calls from
// every tenant.
const AnyTenant = "*"

// BotSpec identifies the calling bot.
type BotSpec struct {
	// AppID is the bot's Entra application (client) id; inbound tokens carry it as aud.
	// +kubebuilder:validation:Format=uuid
	// +kubebuilder:validation:MaxLength=36
	AppID string `json:"appId"`

	// TenantID is the bot's home tenant: inbound tokens from it are
	// accepted, and Graph actions on its calls use its app tokens.
	// +kubebuilder:validation:Format=uuid
	// +kubebuilder:validation:MaxLength=36
	TenantID string `json:"tenantId"`

	// AdditionalTenants, for multi-tenant bots, are the other tenants that
	// consented to the bot: uuids, or the single entry "*" for any tenant.
	// An inbound token whose tenant claim is one of them is accepted, and
	// every Graph action on a call uses an app token from the call's tenant
	// (authority {authorityHost}{tenant}), never the home tenant's. A token
	// from any other tenant is refused with 403.
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:MaxLength=36
	// +kubebuilder:validation:items:Pattern=`^(\*|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})$`
	// +kubebuilder:validation:XValidation:rule="!self.exists(t, t == '*') || size(self) == 1",message="* (any tenant) must be the only entry of additionalTenants"
	// +optional
	AdditionalTenants []string `json:"additionalTenants,omitempty"`

	// Credentials says how the receiver gets Graph tokens.
	Credentials Credentials `json:"credentials"`
}

// Credentials names exactly one credential source.
// +kubebuilder:validation:XValidation:rule="has(self.secretRef) != has(self.workloadIdentity)",message="exactly one of secretRef or workloadIdentity must be set"
type Credentials struct {
	// SecretRef names a Secret in the policy's namespace with key client-secret, or tls.crt and tls.key.
	// +optional
	SecretRef *SecretReference `json:"secretRef,omitempty"`

	// WorkloadIdentity uses Azure workload identity federation.
	// +optional
	WorkloadIdentity *WorkloadIdentity `json:"workloadIdentity,omitempty"`
}

// SecretReference names a Secret in the same namespace.
type SecretReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// WorkloadIdentity selects Azure workload identity federation; it has no fields yet.
type WorkloadIdentity struct{}

// GraphSpec locates Graph and its identity services.
type GraphSpec struct {
	// Endpoint is the Graph base URL.
	// +kubebuilder:default="https://graph.microsoft.com"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="must be an https:// URL: the bot's Graph access tokens are sent there"
	// +optional
	Endpoint string `json:"endpoint,omitempty"`

	// APIVersion is v1.0 or beta.
	// +kubebuilder:default="v1.0"
	// +optional
	APIVersion APIVersion `json:"apiVersion,omitempty"`

	// AuthorityHost is the token authority.
	// +kubebuilder:default="https://login.microsoftonline.com/"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="must be an https:// URL: the bot's credentials are sent there"
	// +optional
	AuthorityHost string `json:"authorityHost,omitempty"`

	// OpenIDConfigURL is where inbound-token signing keys are discovered; the
	// jwks_uri it names must be https too (the receiver refuses any other).
	// +kubebuilder:default="https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="must be an https:// URL: whoever serves the signing keys can forge every notification"
	// +optional
	OpenIDConfigURL string `json:"openIDConfigURL,omitempty"`

	// Issuers are the accepted iss values of inbound tokens.
	// +kubebuilder:default={"https://api.botframework.com","https://graph.microsoft.com"}
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Issuers []string `json:"issuers,omitempty"`

	// CABundle names a ConfigMap key in the policy's namespace holding extra
	// PEM roots the receivers trust for Graph, the token authority and the
	// OpenID configuration (a private cloud's CA, or the Graph emulator's
	// ca.crt). The receivers restart when it changes.
	// +optional
	CABundle *ConfigMapKeyReference `json:"caBundle,omitempty"`
}

// UpstreamSpec is an existing bot's callback.
type UpstreamSpec struct {
	// URL of the existing bot's callback: https, or plain http only to a
	// cluster-local Service host (NAME.NAMESPACE.svc or
	// NAME.NAMESPACE.svc.cluster.local), since every forwarded notification
	// carries Graph's bearer token.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') ? isURL(self) && url(self).getHostname() != '' : self.matches('^http://([^/?#@]*@)?[A-Za-z0-9-]+([.][A-Za-z0-9-]+)*[.](?i:svc([.]cluster[.]local)?)(:[0-9]+)?([/?#].*)?$')",message="must be an https:// URL, or http:// only to a cluster-local Service host (*.svc or *.svc.cluster.local): every forwarded notification carries Graph's bearer token"
	URL string `json:"url"`
}

// Rule is one ordered rule of a policy.
// +kubebuilder:validation:XValidation:rule="!has(self.reason) || self.action == 'Reject'",message="reason is only allowed when action is Reject",fieldPath=".reason"
// +kubebuilder:validation:XValidation:rule="(self.action == 'Redirect') == has(self.redirect)",message="redirect is required when action is Redirect and not allowed otherwise",fieldPath=".redirect"
// +kubebuilder:validation:XValidation:rule="(self.action == 'Announce') == has(self.announce)",message="announce is required when action is Announce and not allowed otherwise",fieldPath=".announce"
// +kubebuilder:validation:XValidation:rule="!has(self.blockFor) || self.action != 'Allow'",message="blockFor is only allowed on Reject, Redirect and Announce rules",fieldPath=".blockFor"
type Rule struct {
	// Name is a DNS label, unique in the policy.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Action taken when the match holds.
	Action Action `json:"action"`

	// Reason sent as Graph's rejectReason (Reject only; default none).
	// +optional
	Reason RejectReason `json:"reason,omitempty"`

	// Redirect targets (Redirect only).
	// +optional
	Redirect *RedirectSpec `json:"redirect,omitempty"`

	// Announce is the announcement of an Announce rule: the call is
	// answered, the prompt played, and the call hung up.
	// +optional
	Announce *AnnounceSpec `json:"announce,omitempty"`

	// BlockFor (Reject, Redirect and Announce rules; Go duration, 1m to
	// 720h): once this rule decides a call, the caller is under a temporary
	// block of this rule for that long, and matches it whatever its match
	// says (earlier rules still come first). Anonymous callers are never
	// blocked.
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('720h')",message="blockFor must be between 1m and 720h"
	// +optional
	BlockFor *metav1.Duration `json:"blockFor,omitempty"`

	// Match must hold for the rule to decide; an empty match matches every call.
	// +optional
	Match Match `json:"match,omitempty"`
}

// AnnounceSpec is the announcement an Announce rule plays before hanging up.
type AnnounceSpec struct {
	// Prompt is the recording: a WAV file (RIFF/WAVE, PCM, 1 channel,
	// 16,000 Hz, 16-bit, at most 2 MiB).
	Prompt PromptSource `json:"prompt"`

	// MaxSeconds: the call is hung up at the latest this long after it was
	// answered, whatever Graph reports (5 to 120).
	// +kubebuilder:default=30
	// +kubebuilder:validation:Minimum=5
	// +kubebuilder:validation:Maximum=120
	// +optional
	MaxSeconds int32 `json:"maxSeconds,omitempty"`
}

// PromptSource is exactly one of a ConfigMap key or an https URL.
// +kubebuilder:validation:XValidation:rule="has(self.configMapKeyRef) != has(self.url)",message="exactly one of configMapKeyRef or url must be set"
type PromptSource struct {
	// ConfigMapKeyRef names a binaryData key of a ConfigMap in the policy's
	// namespace holding the WAV file. The receivers serve it to Graph under
	// the public callback URL, so it needs receiver.expose.
	// +optional
	ConfigMapKeyRef *ConfigMapKeyReference `json:"configMapKeyRef,omitempty"`

	// URL is an https URL Graph fetches the WAV file from. The operator and
	// the receivers never fetch it; kubectl callpolicy lint checks it.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') && isURL(self)",message="must be an https:// URL"
	// +optional
	URL string `json:"url,omitempty"`
}

// StateSpec is where repeat-call counts and temporary blocks live.
type StateSpec struct {
	// Redis is a server speaking the Redis protocol (Redis, Valkey, a
	// managed cloud Redis) shared by every receiver replica. The store
	// holds no phone number: callers are keyed by HMAC-SHA256 with a
	// per-policy key in the Secret NAME-callguard-state, which the operator
	// makes.
	// +optional
	Redis *RedisSpec `json:"redis,omitempty"`

	// OnError is what happens when the store cannot answer within 100 ms:
	// Ignore, the repeat/temporary-block part of a rule does not hold (fail
	// open); Match, the repeat part holds (fail closed). The call is decided
	// in time either way.
	// +kubebuilder:default=Ignore
	// +optional
	OnError StateOnError `json:"onError,omitempty"`
}

// RedisSpec reaches a Redis-protocol server.
type RedisSpec struct {
	// Address is "host:port".
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:Pattern=`^[^\s/]+:[0-9]{1,5}$`
	Address string `json:"address"`

	// Database is the logical database number.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1024
	// +optional
	Database int32 `json:"database,omitempty"`

	// TLS connects over TLS.
	// +optional
	TLS *RedisTLS `json:"tls,omitempty"`

	// UsernameSecretRef names the Secret key holding the ACL user name.
	// +optional
	UsernameSecretRef *SecretKeyReference `json:"usernameSecretRef,omitempty"`

	// PasswordSecretRef names the Secret key holding the password.
	// +optional
	PasswordSecretRef *SecretKeyReference `json:"passwordSecretRef,omitempty"`

	// KeyPrefix starts every key callguard writes.
	// +kubebuilder:default="callguard:"
	// +kubebuilder:validation:MaxLength=64
	// +optional
	KeyPrefix string `json:"keyPrefix,omitempty"`
}

// RedisTLS is the TLS of the connection to the store.
type RedisTLS struct {
	// Enabled connects over TLS.
	// +optional
	Enabled bool `json:"enabled,omitempty"`

	// CABundle names a ConfigMap key with the PEM roots to trust (default:
	// the system roots).
	// +optional
	CABundle *ConfigMapKeyReference `json:"caBundle,omitempty"`
}

// SecretKeyReference names a key of a Secret in the policy's namespace.
type SecretKeyReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key in the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// RedirectSpec redirects a call to 1..25 targets that ring at once.
// +kubebuilder:validation:XValidation:rule="size(self.targets) >= 1 && size(self.targets) <= 25",message="redirect needs 1 to 25 targets",fieldPath=".targets"
type RedirectSpec struct {
	// Targets ring at once (simultaneous ring): 1 to 25; the first to
	// answer takes the call.
	// +kubebuilder:validation:MaxItems=25
	Targets []RedirectTarget `json:"targets"`

	// TimeoutSeconds before the redirect gives up.
	// +kubebuilder:validation:Minimum=15
	// +kubebuilder:validation:Maximum=90
	// +kubebuilder:default=30
	// +optional
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// RedirectTarget is exactly one of a phone number, a user or an application instance.
// +kubebuilder:validation:XValidation:rule="[has(self.phone), has(self.user), has(self.applicationInstance)].filter(x, x).size() == 1",message="a redirect target needs exactly one of phone, user or applicationInstance"
type RedirectTarget struct {
	// Phone is an E.164 number.
	// +kubebuilder:validation:Pattern=`^\+[1-9][0-9]{1,14}$`
	// +optional
	Phone string `json:"phone,omitempty"`

	// User is a user's object id.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	User string `json:"user,omitempty"`

	// ApplicationInstance is an application instance's object id.
	// +kubebuilder:validation:MaxLength=64
	// +optional
	ApplicationInstance string `json:"applicationInstance,omitempty"`
}

// Match holds when every given field holds; inside a list any item may hold.
type Match struct {
	// Callers match on the caller's identity.
	// +optional
	Callers *CallerMatch `json:"callers,omitempty"`

	// Modalities hold if the call requested any of them.
	// +kubebuilder:validation:MaxItems=4
	// +optional
	Modalities []Modality `json:"modalities,omitempty"`

	// Tenants hold when the CALL's tenant (the tenant the call arrived in:
	// the notification token's tenant claim) is one of them: per-customer
	// rules for multi-tenant bots (bot.additionalTenants). Not the caller's
	// tenant, which is callers.tenantIds.
	// +kubebuilder:validation:MaxItems=1000
	// +kubebuilder:validation:items:Format=uuid
	// +kubebuilder:validation:items:MaxLength=36
	// +optional
	Tenants []string `json:"tenants,omitempty"`

	// Schedule holds when the call arrives in one of its windows.
	// +optional
	Schedule *Schedule `json:"schedule,omitempty"`

	// Expression is CEL over call, caller and now; it must evaluate to bool.
	// +kubebuilder:validation:MaxLength=4096
	// +optional
	Expression string `json:"expression,omitempty"`
}

// CallerMatch matches the caller (call.source.identity).
type CallerMatch struct {
	// Numbers are exact E.164 numbers, compared after normalization.
	// +kubebuilder:validation:MaxItems=10000
	// +optional
	Numbers []string `json:"numbers,omitempty"`

	// NumberPrefixes match normalized numbers that start with them.
	// +kubebuilder:validation:MaxItems=10000
	// +optional
	NumberPrefixes []string `json:"numberPrefixes,omitempty"`

	// NumberPatterns are RE2 regexes searched in the normalized number (with its leading +).
	// +kubebuilder:validation:MaxItems=256
	// +optional
	NumberPatterns []string `json:"numberPatterns,omitempty"`

	// NumberLists name ConfigMap keys holding one number or prefix (ending in *) a line.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	NumberLists []NumberList `json:"numberLists,omitempty"`

	// IdentityTypes the caller may have.
	// +kubebuilder:validation:MaxItems=10
	// +optional
	IdentityTypes []IdentityType `json:"identityTypes,omitempty"`

	// IDs are object ids of the caller's user, guest, application or applicationInstance identity.
	// +kubebuilder:validation:MaxItems=10000
	// +optional
	IDs []string `json:"ids,omitempty"`

	// TenantIDs are callers' tenant ids.
	// +kubebuilder:validation:MaxItems=1000
	// +optional
	TenantIDs []string `json:"tenantIds,omitempty"`

	// DisplayNamePatterns are RE2 regexes searched in the caller's display name.
	// +kubebuilder:validation:MaxItems=256
	// +optional
	DisplayNamePatterns []string `json:"displayNamePatterns,omitempty"`

	// Repeat holds when this caller placed at least calls calls to this
	// bot, this one included, within the last within. Every decided call
	// counts once, whichever rule decides it. The caller is its normalized
	// number, or its identity id; anonymous callers never match.
	// +optional
	Repeat *RepeatMatch `json:"repeat,omitempty"`
}

// RepeatMatch is "the Nth call of one caller within a window".
type RepeatMatch struct {
	// Calls is how many calls, this one included (2 to 1,000).
	// +kubebuilder:validation:Minimum=2
	// +kubebuilder:validation:Maximum=1000
	Calls int32 `json:"calls"`

	// Within is the window, a Go duration from 1m to 24h.
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('24h')",message="within must be between 1m and 24h"
	Within metav1.Duration `json:"within"`
}

// NumberList names a ConfigMap key in the policy's namespace.
type NumberList struct {
	ConfigMapKeyRef ConfigMapKeyReference `json:"configMapKeyRef"`
}

// ConfigMapKeyReference names one key of a ConfigMap in the same namespace.
type ConfigMapKeyReference struct {
	// Name of the ConfigMap.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Key in the ConfigMap's data or binaryData.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key"`
}

// Schedule holds when a call arrives inside one of its windows.
type Schedule struct {
	// TimeZone is an IANA zone name.
	// +kubebuilder:default=UTC
	// +optional
	TimeZone string `json:"timeZone,omitempty"`

	// Windows: the schedule holds when the call arrives inside any of them
	// (1 to 64).
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	Windows []Window `json:"windows"`
}

// Window is a weekly time window; End <= Start runs past midnight into the next day.
type Window struct {
	// Days name the day the window starts.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=7
	Days []Weekday `json:"days"`
	// Start is the local time the window opens, "HH:MM".
	// +kubebuilder:validation:Pattern=`^([01][0-9]|2[0-3]):[0-5][0-9]$`
	Start string `json:"start"`
	// End is the local time the window closes, "HH:MM" or "24:00"; at or
	// before Start, the window runs past midnight into the next day.
	// +kubebuilder:validation:Pattern=`^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$`
	End string `json:"end"`
}

// ReceiverSpec configures the receiver Deployment.
type ReceiverSpec struct {
	// Replicas of the receiver Deployment; a PodDisruptionBudget keeps one up when > 1.
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Image overrides the operator's --receiver-image.
	// +optional
	Image string `json:"image,omitempty"`

	// Resources default to requests cpu 500m, memory 128Mi, ephemeral-storage
	// 64Mi and limits memory 256Mi, ephemeral-storage 256Mi, with no CPU limit
	// (DefaultReceiverResources): a CPU limit throttles the receivers below
	// Graph's per-tenant ceiling.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// NodeSelector is passed to the receiver pods.
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Tolerations are passed to the receiver pods.
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// PriorityClassName is passed to the receiver pods.
	// +optional
	PriorityClassName string `json:"priorityClassName,omitempty"`

	// CallbackPath is the path of the Graph callback.
	// +kubebuilder:default="/api/calls"
	// +kubebuilder:validation:Pattern=`^/[A-Za-z0-9/_.-]*$`
	// +optional
	CallbackPath string `json:"callbackPath,omitempty"`

	// Expose makes the callback reachable from the internet through an
	// Ingress or a Gateway API HTTPRoute owned by the policy;
	// status.receiver.callbackURL then shows the URL to enter as the bot's
	// calling webhook.
	// +optional
	Expose *ExposeSpec `json:"expose,omitempty"`

	// Autoscaling runs a HorizontalPodAutoscaler on the receivers' CPU; while
	// it is set, replicas is ignored and the Deployment's replicas are the
	// autoscaler's.
	// +optional
	Autoscaling *AutoscalingSpec `json:"autoscaling,omitempty"`

	// NetworkPolicy limits the receivers' traffic; on unless enabled is false.
	// +optional
	NetworkPolicy *NetworkPolicySpec `json:"networkPolicy,omitempty"`
}

// ExposeSpec is exactly one of an Ingress, an HTTPRoute or a URL routed elsewhere.
// +kubebuilder:validation:XValidation:rule="[has(self.ingress), has(self.httpRoute), has(self.url)].filter(x, x).size() == 1",message="exactly one of ingress, httpRoute or url must be set"
type ExposeSpec struct {
	// URL is the public https URL of the callback when you route it to the
	// receivers' Service yourself; nothing is created.
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') && isURL(self) && url(self).getHostname() != ''",message="must be an https:// URL"
	// +optional
	URL string `json:"url,omitempty"`

	// Ingress makes a networking.k8s.io/v1 Ingress for host and the callback path.
	// +optional
	Ingress *IngressExpose `json:"ingress,omitempty"`

	// HTTPRoute makes a Gateway API (gateway.networking.k8s.io/v1) HTTPRoute;
	// the Gateway API CRDs must be installed.
	// +optional
	HTTPRoute *HTTPRouteExpose `json:"httpRoute,omitempty"`
}

// IngressExpose is an Ingress for the callback.
type IngressExpose struct {
	// ClassName is the Ingress' ingressClassName (default: the cluster's default class).
	// +kubebuilder:validation:MaxLength=253
	// +optional
	ClassName string `json:"className,omitempty"`

	// Host is the public DNS name Graph calls, e.g. calls.example.com.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	Host string `json:"host"`

	// TLSSecretName names the Secret with the host's certificate (tls.crt,
	// tls.key) in the policy's namespace, e.g. the one cert-manager issues
	// through annotations.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	TLSSecretName string `json:"tlsSecretName,omitempty"`

	// Annotations are put on the Ingress as they are (e.g.
	// cert-manager.io/cluster-issuer, or the ingress controller's settings).
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// HTTPRouteExpose is a Gateway API HTTPRoute for the callback.
// +kubebuilder:validation:XValidation:rule="self.hostnames.all(h, !h.startsWith('*'))",message="hostnames must be exact names, not wildcards: Graph calls one URL",fieldPath=".hostnames"
type HTTPRouteExpose struct {
	// ParentRefs are the Gateways (or their listeners) the route attaches to.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	ParentRefs []gatewayv1.ParentReference `json:"parentRefs"`

	// Hostnames the route answers; the first is the callback URL's host.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	Hostnames []gatewayv1.Hostname `json:"hostnames"`
}

// AutoscalingSpec sizes the receivers by their CPU utilization.
// +kubebuilder:validation:XValidation:rule="!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",message="maxReplicas must be at least minReplicas",fieldPath=".maxReplicas"
type AutoscalingSpec struct {
	// MinReplicas is the fewest receivers (default 2; a PodDisruptionBudget
	// keeps one up when it is more than 1).
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +optional
	MinReplicas *int32 `json:"minReplicas,omitempty"`

	// MaxReplicas is the most receivers.
	// +kubebuilder:validation:Minimum=1
	MaxReplicas int32 `json:"maxReplicas"`

	// TargetCPUUtilizationPercentage is the average CPU use, in percent of
	// the receivers' CPU request, that the autoscaler keeps them at.
	// +kubebuilder:default=70
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	// +optional
	TargetCPUUtilizationPercentage *int32 `json:"targetCPUUtilizationPercentage,omitempty"`
}

// NetworkPolicySpec is the receivers' NetworkPolicy.
type NetworkPolicySpec struct {
	// Enabled makes the NetworkPolicy (default true).
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`

	// CallbackFrom may reach the callback port; empty: from anywhere (Graph
	// comes from the internet, usually through an ingress controller).
	// +kubebuilder:validation:MaxItems=64
	// +optional
	CallbackFrom []networkingv1.NetworkPolicyPeer `json:"callbackFrom,omitempty"`

	// MetricsFrom may reach the metrics port (metrics, health, recent
	// decisions); empty: the namespaces the operator names with
	// --metrics-scraper-namespaces. The API server (its pod proxy, which
	// kubectl callpolicy decisions uses) may always reach it.
	// +kubebuilder:validation:MaxItems=64
	// +optional
	MetricsFrom []networkingv1.NetworkPolicyPeer `json:"metricsFrom,omitempty"`
}

// CallPolicyStatus is the observed state of a CallPolicy.
type CallPolicyStatus struct {
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Rules is the number of rules of the applied policy.
	// +optional
	Rules int32 `json:"rules,omitempty"`

	// PolicyHash is the sha256 of the applied policy ConfigMap.
	// +optional
	PolicyHash string `json:"policyHash,omitempty"`

	// +optional
	Receiver ReceiverStatus `json:"receiver,omitempty"`

	// Conditions (kstatus): Ready, Reconciling and Stalled, each with the
	// generation it describes.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ReceiverStatus reports the receiver Deployment.
type ReceiverStatus struct {
	// Replicas is the receiver Deployment's replicas.
	// +optional
	Replicas int32 `json:"replicas,omitempty"`
	// ReadyReplicas is how many receivers are ready.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas,omitempty"`
	// Service is the receivers' Service name.
	// +optional
	Service string `json:"service,omitempty"`
	// CallbackPath is the path of the Graph callback on the Service.
	// +optional
	CallbackPath string `json:"callbackPath,omitempty"`
	// CallbackURL is the https URL to enter as the bot's calling webhook,
	// when spec.receiver.expose is set and applied; empty otherwise.
	// +optional
	CallbackURL string `json:"callbackURL,omitempty"`
}

// CallPolicy declares how a Microsoft Graph calling bot treats incoming calls.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=cpol,categories=callguard
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Default",type=string,JSONPath=`.spec.defaultAction`
// +kubebuilder:printcolumn:name="Rules",type=integer,JSONPath=`.status.rules`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Graph Access",type=string,JSONPath=`.status.conditions[?(@.type=="GraphAccess")].reason`,priority=1
// +kubebuilder:printcolumn:name="Callback URL",type=string,JSONPath=`.status.receiver.callbackURL`,priority=1
// +kubebuilder:printcolumn:name="Graph Access Message",type=string,JSONPath=`.status.conditions[?(@.type=="GraphAccess")].message`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CallPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CallPolicySpec   `json:"spec,omitempty"`
	Status CallPolicyStatus `json:"status,omitempty"`
}

// CallPolicyList contains a list of CallPolicy.
// +kubebuilder:object:root=true
type CallPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CallPolicy `json:"items"`
}
