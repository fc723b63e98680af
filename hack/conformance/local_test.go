// Added to containerd's integration/client package by hack/conformance.sh
// (containerd-shim-pyrunc); not part of containerd.
//
// The suite's own TestMain starts its containerd under fixed paths and pulls its image
// from ghcr.io. hack/conformance.sh redirects both to these two helpers:
//   - conformancePath: root, state and socket under $PYRUNC_CONFORMANCE_DIR, a directory
//     the script makes (and removes) for each run;
//   - seedImage: the image the suite expects (testImage) comes from the OCI archive
//     $PYRUNC_CONFORMANCE_IMAGE (the project's test image) through the import API, retagged
//     as testImage and unpacked, instead of a pull from a registry.

package client

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	. "github.com/containerd/containerd"
	"github.com/containerd/containerd/platforms"
)

func conformanceEnv(name string) string {
	value := os.Getenv(name)
	if value == "" {
		fmt.Fprintf(os.Stderr, "%s is not set (run the suite through hack/conformance.sh)\n", name)
		os.Exit(2)
	}
	return value
}

func conformancePath(name string) string {
	return filepath.Join(conformanceEnv("PYRUNC_CONFORMANCE_DIR"), name)
}

func seedImage(ctx context.Context, client *Client, snapshotter string) error {
	archive, err := os.Open(conformanceEnv("PYRUNC_CONFORMANCE_IMAGE"))
	if err != nil {
		return err
	}
	defer archive.Close()
	imported, err := client.Import(ctx, archive, WithImportPlatform(platforms.Default()))
	if err != nil {
		return fmt.Errorf("import %s: %w", archive.Name(), err)
	}
	if len(imported) != 1 {
		return fmt.Errorf("import %s: want one image, got %v", archive.Name(), imported)
	}
	// Retag: the archive's own name gives way to the one the suite uses.
	is := client.ImageService()
	seed := imported[0]
	seed.Name = testImage
	if _, err := is.Create(ctx, seed); err != nil {
		return fmt.Errorf("tag %s as %s: %w", imported[0].Name, testImage, err)
	}
	if err := is.Delete(ctx, imported[0].Name); err != nil {
		return fmt.Errorf("untag %s: %w", imported[0].Name, err)
	}
	return NewImageWithPlatform(client, seed, platforms.Default()).Unpack(ctx, snapshotter)
}
