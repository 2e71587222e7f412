package envoy

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

type validator interface {
	ValidateAll() error
}

// Validate runs Envoy's field rules (the protoc-gen-validate ValidateAll)
// on m and on every message packed in an Any anywhere inside it, which
// ValidateAll does not look into: the typed configs of filters, transport
// sockets and resource monitors. Every violation is reported.
func Validate(m proto.Message) error {
	var errs []error
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			errs = append(errs, err)
		}
	}
	walkAnys(m.ProtoReflect(), func(a *anypb.Any) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("typed config %s: %w", a.GetTypeUrl(), err))
			return
		}
		if err := Validate(inner); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", inner.ProtoReflect().Descriptor().FullName(), err))
		}
	})
	return errors.Join(errs...)
}

// walkAnys calls f for each Any nested in m, not looking into the Anys.
func walkAnys(m protoreflect.Message, f func(*anypb.Any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message(), f)
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				l := v.List()
				for i := 0; i < l.Len(); i++ {
					visit(l.Get(i).Message(), f)
				}
			}
		case fd.Message() != nil:
			visit(v.Message(), f)
		}
		return true
	})
}

func visit(m protoreflect.Message, f func(*anypb.Any)) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		f(a)
		return
	}
	walkAnys(m, f)
}
