/*
 * srtp-peer: SRTP/SRTCP as Debian's libsrtp2 does it, for tests/tests/srtp_libsrtp.rs.
 *
 *   srtp-peer 80|32 KEYHEX < commands
 *
 * KEYHEX is the 30-byte master key || master salt (60 hex digits); 80 or 32 picks
 * AES_CM_128_HMAC_SHA1_80 or _32 for SRTP (SRTCP always has the 80-bit tag, RFC 4568).
 * Each input line is a command and a packet in hex:
 *   P HEX  protect RTP        U HEX  unprotect SRTP
 *   p HEX  protect RTCP       u HEX  unprotect SRTCP
 * and each gets one output line: "OK HEX" or "ERR N" (N: libsrtp's srtp_err_status_t).
 * Protection uses one session (any outbound SSRC), unprotection another (any inbound).
 * Input lines are at most 8 KiB of hex; anything else is a usage error (exit 2).
 */
#include <srtp2/srtp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PACKET 4096
#define MAX_LINE (2 * MAX_PACKET + 16)

static int unhex(const char *s, unsigned char *out, int max)
{
    int n = 0;
    while (s[0] && s[0] != '\n' && s[0] != '\r') {
        unsigned int b;
        if (n >= max || !s[1] || sscanf(s, "%2x", &b) != 1)
            return -1;
        out[n++] = (unsigned char)b;
        s += 2;
    }
    return n;
}

static srtp_t session(int tag80, const unsigned char *key, srtp_ssrc_type_t type)
{
    srtp_policy_t policy;
    srtp_t s;
    memset(&policy, 0, sizeof policy);
    if (tag80)
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtp);
    else
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_32(&policy.rtp);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtcp);
    policy.ssrc.type = type;
    policy.key = (unsigned char *)key;
    policy.window_size = 128;
    policy.allow_repeat_tx = 0;
    policy.next = NULL;
    if (srtp_create(&s, &policy) != srtp_err_status_ok) {
        fprintf(stderr, "srtp-peer: srtp_create failed\n");
        exit(1);
    }
    return s;
}

int main(int argc, char **argv)
{
    unsigned char key[30];
    static char line[MAX_LINE];
    static unsigned char buf[MAX_PACKET + SRTP_MAX_TRAILER_LEN];
    srtp_t out, in;
    if (argc != 3 || (strcmp(argv[1], "80") && strcmp(argv[1], "32")) ||
        strlen(argv[2]) != 60 || unhex(argv[2], key, 30) != 30) {
        fprintf(stderr, "usage: srtp-peer 80|32 KEYHEX(60)\n");
        return 2;
    }
    if (srtp_init() != srtp_err_status_ok) {
        fprintf(stderr, "srtp-peer: srtp_init failed\n");
        return 1;
    }
    out = session(!strcmp(argv[1], "80"), key, ssrc_any_outbound);
    in = session(!strcmp(argv[1], "80"), key, ssrc_any_inbound);
    while (fgets(line, sizeof line, stdin)) {
        int len, i;
        srtp_err_status_t st;
        if (strlen(line) < 2 || line[1] != ' ' || (len = unhex(line + 2, buf, MAX_PACKET)) < 0) {
            fprintf(stderr, "srtp-peer: bad line\n");
            return 2;
        }
        switch (line[0]) {
        case 'P': st = srtp_protect(out, buf, &len); break;
        case 'U': st = srtp_unprotect(in, buf, &len); break;
        case 'p': st = srtp_protect_rtcp(out, buf, &len); break;
        case 'u': st = srtp_unprotect_rtcp(in, buf, &len); break;
        default:
            fprintf(stderr, "srtp-peer: bad command %c\n", line[0]);
            return 2;
        }
        if (st != srtp_err_status_ok) {
            printf("ERR %d\n", (int)st);
        } else {
            printf("OK ");
            for (i = 0; i < len; i++)
                printf("%02x", buf[i]);
            printf("\n");
        }
        fflush(stdout);
    }
    srtp_dealloc(out);
    srtp_dealloc(in);
    srtp_shutdown();
    return 0;
}
