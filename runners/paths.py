"""Path flags: relative paths are relative to where the user ran the command."""

import os


def resolve_path(path):
  """Resolves a relative path against the user's working directory.

  `bazel run` starts binaries in their runfiles tree; it exports the user's
  workspace as BUILD_WORKSPACE_DIRECTORY, against which relative paths resolve.
  None and absolute paths are returned unchanged.
  """
  if path is None or os.path.isabs(path):
    return path
  return os.path.join(os.environ.get('BUILD_WORKSPACE_DIRECTORY', os.getcwd()), path)
