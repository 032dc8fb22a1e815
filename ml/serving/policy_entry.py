"""Models-from-code entry of the policy: MLflow runs this file when it loads one."""

import mlflow

from ml.serving.models import PolicyPyfunc

mlflow.models.set_model(PolicyPyfunc())
