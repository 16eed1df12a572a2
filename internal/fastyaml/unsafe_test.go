package fastyaml

import "unsafe"

func unsafeStringData(s string) uintptr { return uintptr(unsafe.Pointer(unsafe.StringData(s))) }

func uintptrOf(b *byte) uintptr { return uintptr(unsafe.Pointer(b)) }
