//! Instance status codes, numbered as PowerJob numbers them.

use serde::{Deserialize, Serialize};

/// The status of a job instance. The numeric codes are stored in the database and are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sea-orm",
    derive(sea_orm::EnumIter, sea_orm::DeriveActiveEnum),
    sea_orm(rs_type = "i32", db_type = "Integer")
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 1))]
    WaitingDispatch,
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 2))]
    WaitingWorkerReceive,
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 3))]
    Running,
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 4))]
    Failed,
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 5))]
    Succeeded,
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 9))]
    Canceled,
    #[cfg_attr(feature = "sea-orm", sea_orm(num_value = 10))]
    Stopped,
}

impl InstanceStatus {
    pub const ALL: [InstanceStatus; 7] = [
        Self::WaitingDispatch,
        Self::WaitingWorkerReceive,
        Self::Running,
        Self::Failed,
        Self::Succeeded,
        Self::Canceled,
        Self::Stopped,
    ];

    /// The stable numeric code.
    pub const fn code(self) -> i32 {
        match self {
            Self::WaitingDispatch => 1,
            Self::WaitingWorkerReceive => 2,
            Self::Running => 3,
            Self::Failed => 4,
            Self::Succeeded => 5,
            Self::Canceled => 9,
            Self::Stopped => 10,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// A terminal status never changes again.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Succeeded | Self::Canceled | Self::Stopped
        )
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WaitingDispatch => "WAITING_DISPATCH",
            Self::WaitingWorkerReceive => "WAITING_WORKER_RECEIVE",
            Self::Running => "RUNNING",
            Self::Failed => "FAILED",
            Self::Succeeded => "SUCCEEDED",
            Self::Canceled => "CANCELED",
            Self::Stopped => "STOPPED",
        }
    }

    /// Parses a status by name (any case) or by numeric code.
    pub fn parse(s: &str) -> Option<Self> {
        if let Ok(code) = s.parse::<i32>() {
            return Self::from_code(code);
        }
        Self::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_terminal_set_is_powerjobs() {
        for s in InstanceStatus::ALL {
            assert_eq!(InstanceStatus::from_code(s.code()), Some(s));
            assert_eq!(InstanceStatus::parse(s.as_str()), Some(s));
        }
        let terminal: Vec<i32> = InstanceStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.code())
            .collect();
        assert_eq!(terminal, vec![4, 5, 9, 10]);
        assert_eq!(InstanceStatus::from_code(6), None);
    }
}
