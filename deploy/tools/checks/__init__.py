"""The deployment checks run by scripts/check-deploy.sh, one module per subject."""
