"""Generated protobuf and gRPC stubs for papersearch.v1 (see papersearch.api.generate).

Only this file is tracked; papersearch_pb2.py, papersearch_pb2_grpc.py, papersearch_pb2.pyi
and the copy of papersearch.proto are written at install time.
"""
