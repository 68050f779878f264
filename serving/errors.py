"""The request failure every layer of the server raises: a gRPC status code and a one-line message.

Its own module so that both the model manager (serving/models.py) and the batch scheduler it uses
(serving/batching.py) can raise it without importing each other.
"""

import grpc


class ServingError(Exception):
    """A request failure with the gRPC status code TF Serving would answer (REST maps it to HTTP)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)
