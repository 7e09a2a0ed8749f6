/*
 * USDT probes for tests/test_usdt_sensor.py, written the way <sys/sdt.h> writes them (a nop, and a
 * .note.stapsdt note with the nop's address, .stapsdt.base, the semaphore and the argument specs), by hand
 * so that the test needs no systemtap headers and names each argument's location exactly.
 *
 *   usdt_prog sema      test:usdt3 (semaphore-guarded): -4@%edi, -8@%rsi, 8@%rdx = 1, 42, 0xdeadbeef
 *   usdt_prog set A B   tetragon:test_4B: -4@<memory> (a local, 0), -4@<reg> A, -4@<reg> B; prints the local
 *   usdt_prog forms     test:forms: 4@$42, -2@8(%rdi,%rsi,2) (nums[5] = -6), -2@(%rdi) (nums[0] = -1),
 *                       and test:twice, emitted at two places (args 1 then 2)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned short test_usdt3_semaphore __attribute__((section(".probes"), used));

#define NOTE(prov, name, sema, args)                                               \
	"990: nop\n"                                                                   \
	".pushsection .note.stapsdt,\"?\",\"note\"\n"                                  \
	".balign 4\n"                                                                  \
	".4byte 992f-991f, 994f-993f, 3\n"                                             \
	"991: .asciz \"stapsdt\"\n"                                                    \
	"992: .balign 4\n"                                                             \
	"993: .8byte 990b\n"                                                           \
	".8byte _.stapsdt.base\n"                                                      \
	".8byte " sema "\n"                                                            \
	".asciz \"" prov "\"\n"                                                        \
	".asciz \"" name "\"\n"                                                        \
	".asciz \"" args "\"\n"                                                        \
	"994: .balign 4\n"                                                             \
	".popsection\n"                                                                \
	".ifndef _.stapsdt.base\n"                                                     \
	".pushsection .stapsdt.base,\"aG\",\"progbits\",.stapsdt.base,comdat\n"        \
	".weak _.stapsdt.base\n"                                                       \
	".hidden _.stapsdt.base\n"                                                     \
	"_.stapsdt.base: .space 1\n"                                                   \
	".size _.stapsdt.base, 1\n"                                                    \
	".popsection\n"                                                                \
	".endif\n"

static short nums[8] = {-1, -2, -3, -4, -5, -6, -7, -8};

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "sema")) {
		int x = 1;
		long y = 42;
		unsigned long bla = 0xdeadbeef;

		printf("semaphore %u\n", test_usdt3_semaphore);
		if (test_usdt3_semaphore)
			__asm__ __volatile__(NOTE("test", "usdt3", "test_usdt3_semaphore", "-4@%%edi -8@%%rsi 8@%%rdx")
					     :: "D"(x), "S"(y), "d"(bla));
		return 0;
	}
	if (argc >= 4 && !strcmp(argv[1], "set")) {
		volatile int ret4 = 0;
		int a = atoi(argv[2]), b = atoi(argv[3]);

		__asm__ __volatile__(NOTE("tetragon", "test_4B", "0", "-4@%0 -4@%1 -4@%2")
				     :: "m"(ret4), "r"(a), "r"(b) : "memory");
		printf("%d\n", ret4);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "forms")) {
		long idx = 1;

		__asm__ __volatile__(NOTE("test", "forms", "0", "4@$42 -2@8(%%rdi,%%rsi,2) -2@(%%rdi)")
				     :: "D"(nums), "S"(idx) : "memory");
		__asm__ __volatile__(NOTE("test", "twice", "0", "-4@$1") ::: "memory");
		__asm__ __volatile__(NOTE("test", "twice", "0", "-4@$2") ::: "memory");
		return 0;
	}
	return 2;
}
