package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	callsv1alpha1 "github.com/callguard/callguard/api/v1alpha1"
)

// policyConditions makes "a policy is broken" alertable without reading the
// API server: one series per policy, condition type and status, 1 for the
// status the condition has (a condition kstatus leaves out while false
// counts as False).
var policyConditions = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "callguard_callpolicy_condition",
	Help: "A CallPolicy's condition: 1 for its current status, 0 for the others.",
}, []string{"namespace", "name", "type", "status"})

func init() { metrics.Registry.MustRegister(policyConditions) }

var (
	conditionTypes    = []string{ConditionReady, ConditionReconciling, ConditionStalled}
	conditionStatuses = []metav1.ConditionStatus{metav1.ConditionTrue, metav1.ConditionFalse, metav1.ConditionUnknown}
)

// recordConditions exports the conditions of cp's status.
func recordConditions(cp *callsv1alpha1.CallPolicy) {
	for _, t := range conditionTypes {
		status := metav1.ConditionFalse
		if c := meta.FindStatusCondition(cp.Status.Conditions, t); c != nil {
			status = c.Status
		}
		for _, s := range conditionStatuses {
			v := 0.0
			if s == status {
				v = 1
			}
			policyConditions.WithLabelValues(cp.Namespace, cp.Name, t, string(s)).Set(v)
		}
	}
}

// forgetConditions removes the series of a policy that is gone.
func forgetConditions(key types.NamespacedName) {
	policyConditions.DeletePartialMatch(prometheus.Labels{"namespace": key.Namespace, "name": key.Name})
}
