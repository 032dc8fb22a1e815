"""Models-from-code entry of the reward models: MLflow runs this file when it loads one."""

import mlflow

from ml.serving.models import RewardPyfunc

mlflow.models.set_model(RewardPyfunc())
