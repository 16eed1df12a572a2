package nft

import (
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nlError is an NLMSG_ERROR reply with errno code for message seq, as
// sent with NETLINK_CAP_ACK (the failed message's header only).
func nlError(seq uint32, code int32) []byte {
	b := binary.NativeEndian.AppendUint32(nil, unix.NLMSG_HDRLEN+4+unix.NLMSG_HDRLEN)
	b = binary.NativeEndian.AppendUint16(b, unix.NLMSG_ERROR)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = binary.NativeEndian.AppendUint32(b, uint32(code))
	return append(b, make([]byte, unix.NLMSG_HDRLEN)...)
}

func TestReplyErrors(t *testing.T) {
	w := &elemConn{msgs: []seqSet{{7, "learn4.a"}, {8, "learn6.a"}}}
	tests := []struct {
		name  string
		reply []byte
		want  []string
	}{
		{"ack", nlError(7, 0), nil},
		{"error names the set", nlError(8, -int32(syscall.ENOENT)), []string{"set learn6.a: " + syscall.ENOENT.Error()}},
		{"two in one datagram", append(nlError(7, -int32(syscall.EINVAL)), nlError(99, -int32(syscall.EPERM))...),
			[]string{"set learn4.a: " + syscall.EINVAL.Error(), syscall.EPERM.Error()}},
		{"cut short", nlError(7, -int32(syscall.ENOENT))[:unix.NLMSG_HDRLEN+4], []string{"set learn4.a: " + syscall.ENOENT.Error()}},
		{"malformed", []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, []string{"malformed netlink reply"}},
		{"runt", []byte{1, 2, 3}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := w.replyErrors(tt.reply)
			var got []string
			for _, err := range errs {
				got = append(got, err.Error())
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	if errs := w.replyErrors(nlError(8, -int32(syscall.EPERM))); len(errs) != 1 || !errors.Is(errs[0], syscall.EPERM) {
		t.Errorf("errors.Is(EPERM) fails on %v", errs)
	}
}
