"""codeworker.feature_implementation: Implement the feature described in the job's feature_context."""

from codeworker.tasks import operation_task

feature_implementation = operation_task(__name__, __doc__)
