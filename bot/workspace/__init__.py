"""The workspace in the browser for reviewers and operators: sign-in, the operator's console."""
