"""STS GetCallerIdentity: who the signature says the caller is (SDKs and Terraform ask)."""

from __future__ import annotations

from harness.api.actions.common import Context, Params, Result, action


@action("GetCallerIdentity", sts=True)
def get_caller_identity(p: Params, ctx: Context) -> Result:
    return {"UserId": ctx.account.access_key_id, "Account": ctx.account_id,
            "Arn": f"arn:aws:iam::{ctx.account_id}:root"}  # fmt: skip
