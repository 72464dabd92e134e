/* Attacks that need a system call no shell tool of a minimal VPS makes: built statically by the
 * security tests and run inside a VPS as its root. Exit 0: the attack worked (the test fails);
 * exit 1: refused (errno printed); exit 2: bad usage. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEYCTL_LINK 8
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11
#define KEY_SPEC_USER_KEYRING (-4)
#define KEY_SPEC_SESSION_KEYRING (-3)

static int refused(const char *what) {
    printf("%s: refused: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    const char *op = argv[1];
    if (!strcmp(op, "keyread") && argc == 3) { /* read a key by its serial */
        char buf[256] = {0};
        long n = syscall(SYS_keyctl, KEYCTL_READ, atol(argv[2]), buf, sizeof(buf) - 1);
        if (n < 0)
            return refused(op);
        printf("read: %s\n", buf);
        return 0;
    }
    if (!strcmp(op, "keylink") && argc == 3) { /* link it into our own session keyring */
        if (syscall(SYS_keyctl, KEYCTL_LINK, atol(argv[2]), KEY_SPEC_SESSION_KEYRING) < 0)
            return refused(op);
        return 0;
    }
    if (!strcmp(op, "keysearch") && argc == 3) { /* find it by name in "our" user keyring */
        long serial = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", argv[2], 0);
        if (serial < 0)
            return refused(op);
        printf("found: %ld\n", serial);
        return 0;
    }
    if (!strcmp(op, "keyadd") && argc == 4) { /* a key of our own (for another VPS to try) */
        long serial = syscall(SYS_add_key, "user", argv[2], argv[3], strlen(argv[3]),
                              KEY_SPEC_USER_KEYRING);
        if (serial < 0)
            return refused(op);
        printf("%ld\n", serial);
        return 0;
    }
    if (!strcmp(op, "kexec") && argc == 2) { /* any errno but EPERM/ENOSYS got past the check */
        if (syscall(SYS_kexec_load, 0UL, 0UL, NULL, 0UL) == 0 || (errno != EPERM && errno != ENOSYS))
            return printf("kexec_load: allowed (%s)\n", strerror(errno)), 0;
        if (syscall(SYS_kexec_file_load, -1, -1, 0UL, "", 0UL) == 0 ||
            (errno != EPERM && errno != ENOSYS))
            return printf("kexec_file_load: allowed (%s)\n", strerror(errno)), 0;
        return refused(op);
    }
    if (!strcmp(op, "handle") && argc == 3) { /* "shocker": open a file by its handle */
        struct file_handle *h = malloc(sizeof(*h) + MAX_HANDLE_SZ);
        int mount_id;
        h->handle_bytes = MAX_HANDLE_SZ;
        if (name_to_handle_at(AT_FDCWD, argv[2], h, &mount_id, 0) < 0)
            return refused("name_to_handle_at");
        int root = open("/", O_RDONLY | O_DIRECTORY);
        int fd = open_by_handle_at(root, h, O_RDONLY);
        if (fd < 0)
            return refused(op);
        return 0;
    }
    return 2;
}
