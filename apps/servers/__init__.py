"""The example servers on our stack that `vhostnet serve` starts for the guest: UDP echo
(`echo`), the ArceOS-style udpserver (`udpserver`), the classic TCP services (`tcpapps`)
and the HTTP server (`http`). Each is a short program on the blocking API
(`netstack.net`): read them as examples."""
