package kube

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/fqdngate/fqdngate/internal/policy"
	"github.com/fqdngate/fqdngate/internal/testutil/memtest"
)

// apiPod is pod i as a real kube-apiserver v1.37.2 returns the pods of
// bench/kube (kubetest.CreatePod: one container, then a status with the
// address): the defaults the API server fills in, the service account's
// projected token volume, and two managedFields entries (create and
// status update). Labels app=gN for N = i % groups.
func apiPod(i, groups int) *corev1.Pod {
	ts := metav1.NewTime(time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC))
	a := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x00, 0x4b, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
	grace, tol, prio := int64(30), int64(300), int32(0)
	mode, exp := int32(420), int64(3607)
	never := corev1.PreemptLowerPriority
	enable := true
	name := fmt.Sprintf("p%05d", i)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "shop", UID: types.UID(fmt.Sprintf("0b8e6f5e-4f2a-4c1d-9d1e-%012d", i)),
			ResourceVersion: fmt.Sprint(100000 + i), Generation: 1, CreationTimestamp: ts,
			Labels: map[string]string{"app": fmt.Sprintf("g%d", i%groups)},
			ManagedFields: []metav1.ManagedFieldsEntry{
				{Manager: "kubetest", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &ts, FieldsType: "FieldsV1",
					FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:resources":{},"f:terminationMessagePath":{},"f:terminationMessagePolicy":{}}},"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:nodeName":{},"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:terminationGracePeriodSeconds":{}}}`)},
				{Manager: "kubetest", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1", Time: &ts, FieldsType: "FieldsV1", Subresource: "status",
					FieldsV1: metav1.NewFieldsV1(`{"f:status":{"f:phase":{},"f:podIP":{},"f:podIPs":{".":{},"k:{\"ip\":\"` + a.String() + `\"}":{".":{},"f:ip":{}}}}}`)},
			},
		},
		Spec: corev1.PodSpec{
			Volumes: []corev1.Volume{{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
				DefaultMode: &mode,
				Sources: []corev1.VolumeProjection{
					{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{ExpirationSeconds: &exp, Path: "token"}},
					{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"}, Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
					{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
				}}}}},
			Containers: []corev1.Container{{
				Name: "app", Image: "registry.example/app:1", ImagePullPolicy: corev1.PullIfNotPresent,
				TerminationMessagePath: "/dev/termination-log", TerminationMessagePolicy: corev1.TerminationMessageReadFile,
				Resources:    corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m")}},
				VolumeMounts: []corev1.VolumeMount{{Name: "kube-api-access-x7k2p", ReadOnly: true, MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}},
			}},
			RestartPolicy: corev1.RestartPolicyAlways, TerminationGracePeriodSeconds: &grace, DNSPolicy: corev1.DNSClusterFirst,
			ServiceAccountName: "default", DeprecatedServiceAccount: "default", NodeName: "node-a",
			SecurityContext: &corev1.PodSecurityContext{}, SchedulerName: "default-scheduler",
			Tolerations: []corev1.Toleration{
				{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
				{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &tol},
			},
			Priority: &prio, EnableServiceLinks: &enable, PreemptionPolicy: &never,
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, QOSClass: corev1.PodQOSBurstable, PodIP: a.String(), PodIPs: []corev1.PodIP{{IP: a.String()}}},
	}
}

// BenchmarkFollowMemory is the heap a Watcher holds once it follows
// 10,000 pods in 100 groups through real informers (client-go's fake
// clientset, pods shaped as a real API server returns them): the
// informers' cache, the watcher's pods and the last snapshot. The fake
// clientset's own copies are made before the baseline, so they are not
// counted. FQDNGATE_HEAPPROFILE=file writes a heap profile at the end.
//
//	go test -run '^$' -bench FollowMemory -benchtime 1x ./internal/kube/
func BenchmarkFollowMemory(b *testing.B) {
	const pods, groups = 10_000, 100
	p := benchPolicy(b, groups)
	client := fake.NewClientset()
	for i := range pods {
		if err := client.Tracker().Add(apiPod(i, groups)); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		heap0 := memtest.SettledHeap()
		var last atomic.Pointer[policy.Members]
		w, err := New(Config{Client: client, Node: "node-a", Policy: p, OnMembers: func(m *policy.Members) { last.Store(m) }})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		deadline := time.Now().Add(time.Minute)
		for m := last.Load(); m == nil || m.Len() != pods; m = last.Load() {
			if time.Now().After(deadline) {
				b.Fatalf("no snapshot of %d pods within a minute", pods)
			}
			time.Sleep(10 * time.Millisecond)
		}
		heap1 := memtest.SettledHeap()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		memtest.WriteHeapProfile(b)
		held := float64(heap1-heap0) / (1 << 20)
		b.ReportMetric(held, "MiB-held")
		b.ReportMetric(float64(heap1-heap0)/pods, "B/pod")
		b.ReportMetric(float64(ms.HeapSys)/(1<<20), "MiB-HeapSys")
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		runtime.KeepAlive(w)
		debug.FreeOSMemory()
	}
}
