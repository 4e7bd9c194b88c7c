"""The bundle: its layout, manifest, runner code generation, writing, publishing, archives."""
