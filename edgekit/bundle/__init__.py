"""The bundle stage: the manifest sections the runtime defines, for every task."""
