"""Generated protobuf modules (hack/gen-protos.sh). Do not edit."""
