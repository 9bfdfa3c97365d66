"""The whole product: the real Apptainer client, nginx, the deploy files, the demo."""
