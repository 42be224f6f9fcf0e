//! Celery's wire format, sans-I/O: the task messages a Python Celery 5
//! worker takes from a Redis list, as kombu's Redis transport lays them
//! out. The `celery` crate (rusty-celery) is not used: its messages lack
//! `delivery_info` and a Celery 5 worker loses them (`KeyError: 'exchange'`).

pub mod message;
pub mod result;
pub mod tasks;

/// Why `url` cannot be a Celery broker, if it cannot: kombu's Redis
/// transports (`redis://`, `rediss://` with TLS, `redis+unix://` or
/// `unix://` for a socket), in a form the Redis client parses.
pub fn broker_problem(url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
        return Err("must be redis://, rediss:// or redis+unix://, e.g. redis://127.0.0.1:6379/0".into());
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(|_| ())
        .map_err(|e| format!("not a Redis URL: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn broker_urls_are_redis_ones() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "rediss://redis.example.com:6380/1",
            "redis+unix:///run/redis/redis.sock",
            "redis://:secret@localhost/2",
        ] {
            assert_eq!(super::broker_problem(ok), Ok(()), "{ok}");
        }
        for bad in ["amqp://guest@localhost//", "127.0.0.1:6379", "redis://host:notaport/0"] {
            assert!(super::broker_problem(bad).is_err(), "{bad}");
        }
    }
}
