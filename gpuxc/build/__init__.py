"""The build stage: a project's targets built, verified and published as bundles (``pipeline.compile_project``)."""
