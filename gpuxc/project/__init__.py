"""Reading a project: gpux.yml, the model (safely), its signature, reference and calibration inputs."""
