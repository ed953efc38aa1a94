//! Reasons of the ModelDeployment's conditions.

pub const WAITING_FOR_MODEL: &str = "WaitingForModel";
pub const INVALID_SPEC: &str = "InvalidSpec";
pub const STARTING: &str = "Starting";
pub const SERVING: &str = "Serving";
pub const ROLLING_OUT: &str = "RollingOut";
pub const ROLLOUT_FAILED: &str = "RolloutFailed";
pub const UNAVAILABLE: &str = "Unavailable";
pub const CANARY: &str = "Canary";
pub const ROLLOUT_ABORTED: &str = "RolloutAborted";
pub const ROUTE_NOT_USABLE: &str = "RouteNotUsable";
