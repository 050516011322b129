//! The socket client: one connection to QEMU's end of COM2, requests
//! framed with [`ipc::control`], each answer awaited with a timeout.
//!
//! At connect it sends one delimiter, so a half frame an earlier client
//! left in the core's receive buffer ends there instead of swallowing the
//! first request. Answers to other ids (to an earlier client) are skipped;
//! an answer with [`UNKNOWN_REQUEST_ID`] or unreadable bytes only colour
//! the timeout message.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipc::control::{
    self, Command, ControlError, Received, Reply, Request, ResponseReceiver, DELIMITER,
    REQUEST_FRAME_LIMIT, UNKNOWN_REQUEST_ID,
};

use crate::{Core, Error};

/// A connection to the core's control port.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    socket: PathBuf,
    timeout: Duration,
    next_id: u32,
    receiver: Box<ResponseReceiver>,
    pending: VecDeque<u8>,
}

impl Client {
    /// Connects to `socket`; each answer is awaited for up to `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, Error> {
        let stream = UnixStream::connect(socket).map_err(|error| {
            let detail = match error.kind() {
                ErrorKind::NotFound => "no socket there".to_owned(),
                ErrorKind::ConnectionRefused => "nothing listens there: a stale socket".to_owned(),
                _ => error.to_string(),
            };
            Error::NoCore {
                socket: socket.to_path_buf(),
                detail,
            }
        })?;
        let mut client = Self {
            stream,
            socket: socket.to_path_buf(),
            timeout,
            next_id: first_id(),
            receiver: Box::default(),
            pending: VecDeque::new(),
        };
        client
            .stream
            .set_write_timeout(Some(timeout))
            .map_err(|error| client.io(&error))?;
        client.write(&[DELIMITER])?;
        Ok(client)
    }

    fn io(&self, error: &std::io::Error) -> Error {
        Error::Io {
            socket: self.socket.clone(),
            detail: error.to_string(),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        match self.stream.write_all(bytes) {
            Ok(()) => Ok(()),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(Error::Timeout {
                    socket: self.socket.clone(),
                    after: self.timeout,
                    note: Some("the request could not be sent"),
                })
            }
            Err(error) if error.kind() == ErrorKind::BrokenPipe => Err(Error::Closed {
                socket: self.socket.clone(),
            }),
            Err(error) => Err(self.io(&error)),
        }
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = match self.next_id.wrapping_add(1) {
            UNKNOWN_REQUEST_ID => 1,
            next => next,
        };
        id
    }

    /// Waits for the response to `id`.
    fn receive(&mut self, id: u32) -> Result<Result<Reply, ControlError>, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut note = None;
        let mut chunk = [0u8; 1024];
        loop {
            while let Some(byte) = self.pending.pop_front() {
                match self.receiver.push(byte) {
                    None => {}
                    Some(Received::Overflow) => note = Some("only an overlong frame came back"),
                    Some(Received::Frame(frame)) => match control::decode_response(frame) {
                        Ok(response) if response.id == id => return Ok(response.result),
                        Ok(response) if response.id == UNKNOWN_REQUEST_ID => {
                            note = Some("the core answered that it could not decode a request")
                        }
                        // The answer to an earlier client's request.
                        Ok(_) => {}
                        Err(_) => note = Some("only unreadable frames came back"),
                    },
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Timeout {
                    socket: self.socket.clone(),
                    after: self.timeout,
                    note,
                });
            }
            self.stream
                .set_read_timeout(Some(remaining))
                .map_err(|error| self.io(&error))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Error::Closed {
                        socket: self.socket.clone(),
                    })
                }
                Ok(count) => self.pending.extend(&chunk[..count]),
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(error) if error.kind() == ErrorKind::ConnectionReset => {
                    return Err(Error::Closed {
                        socket: self.socket.clone(),
                    })
                }
                Err(error) => return Err(self.io(&error)),
            }
        }
    }
}

impl Core for Client {
    fn call(&mut self, command: Command) -> Result<Reply, Error> {
        command.validate().map_err(Error::Invalid)?;
        let id = self.take_id();
        let mut buffer = [0u8; REQUEST_FRAME_LIMIT];
        let length = control::encode_request(&Request { id, command }, &mut buffer)
            .map_err(|error| Error::Usage(format!("cannot encode the request: {error:?}")))?;
        self.write(&buffer[..length])?;
        self.receive(id)?.map_err(Error::Refused)
    }
}

/// A first request id unlikely to match an answer still in flight to an
/// earlier `hvctl`: from the clock and the process id, never 0.
fn first_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |time| time.subsec_nanos());
    let id = nanos ^ std::process::id().rotate_left(20);
    if id == UNKNOWN_REQUEST_ID {
        1
    } else {
        id
    }
}
